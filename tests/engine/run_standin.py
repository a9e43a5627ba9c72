"""`python tests/engine/run_standin.py {train,test,demo} ARGS...`: the entry points with the stand-in detector
(used by the torchrun test, where the entry point must be a script)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from standin import build_standin  # noqa: E402

from detection import demo, test, train  # noqa: E402

if __name__ == "__main__":
    command = {"train": train.main, "test": test.main, "demo": demo.main}[sys.argv[1]]
    sys.exit(command(sys.argv[2:], model_builder=build_standin))
