"""The hardware profiler: measures this machine with the executor's own kernels and copies and writes a
hwprofiles.HardwareProfile (headplan profile).

Modules, one per measurement: matmul.py, attention.py, attention_step.py (the executor's
per-group attention step), hbm.py (device memory), pcie.py, pinning.py,
runtime.py (launch overhead, runtime memory), host.py (RAM, memcpy), executor_host.py (the executor's
own host time per layer and group); config.py (the grids of each mode),
context.py (shared state, progress lines), assemble.py (results -> profile), summary.py (the table beside
the datasheet), runner.py (order of the sections). Timing goes through executor.runtime.timing.

    from executor.profiler import ProfileOptions, run_profile
    run = run_profile(ProfileOptions(quick=True))
    hwprofiles.write_profile(run.profile, path)
"""

from executor.profiler.runner import ProfileOptions, ProfileRun, ProfileSetupError, planned_name, run_profile

__all__ = ["ProfileOptions", "ProfileRun", "ProfileSetupError", "planned_name", "run_profile"]
