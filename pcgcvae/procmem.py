"""This process's resident memory from ``/proc/self`` (Linux): current, peak, and a peak reset."""

from __future__ import annotations


def _status_kb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_mb() -> float:
    """The resident set now, MiB."""
    return _status_kb("VmRSS") / 1024


def peak_mb() -> float:
    """The resident set's peak since the process started or since :func:`reset_peak`, MiB."""
    return _status_kb("VmHWM") / 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
