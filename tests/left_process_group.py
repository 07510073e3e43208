"""`accelerate launch ... tests/left_process_group.py <train.py | module> args...`: runs the script or module as
its own command line would, then exits 3 if it succeeded but returned with its process group still up (after an
error the group is left as it is: another process may still be in a collective).

A process that exits with a gloo group up aborts only now and then (at interpreter shutdown), so the tests check
the cause, the group left up, rather than wait for the abort.
"""

import runpy
import sys

import torch.distributed as dist

target = sys.argv[1]
sys.argv = sys.argv[1:]
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exit_info:
    code = exit_info.code
if code in (0, None) and dist.is_initialized():
    print(f"{target} succeeded but returned with its process group still up", file=sys.stderr)
    dist.destroy_process_group()
    sys.exit(3)
sys.exit(code)
