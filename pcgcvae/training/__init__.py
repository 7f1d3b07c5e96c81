"""Training, evaluation and checkpoints: the part of pcgcvae that needs torch and torch_geometric.

Nothing inside a solve imports this subpackage: the preconditioners (:mod:`pcgcvae.pc`) read the
torch-free ``.npz`` exports of the models through :mod:`pcgcvae.inference`
(``tests/test_inference.py`` checks that a solve never imports it, nor torch).  Install its
dependencies with ``pip install pcgcvae[train]``.

* :mod:`.dataset` -- Firedrake training problems, stored in the preconditioner's ordering;
* :mod:`.graph`, :mod:`.model`, :mod:`.quality` -- the GCVAE in torch / torch_geometric and its losses;
* :mod:`.train`, :mod:`.checkpoint` -- training and ``.pt`` checkpoints;
* :mod:`.heldout`, :mod:`.calibrate` -- held-out evaluation and the guard's calibration;
* :mod:`.export` -- ``.pt`` to the run time's ``.npz``.
"""
