"""setup.py's choice of CUDA architectures (build_tools/cuda_arch.py): a default when no GPU is visible and
TORCH_CUDA_ARCH_LIST is unset (torch's own detection fails there), the user's list otherwise; the README names the
default."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "build_tools"))

from cuda_arch import DEFAULT_ARCH_LIST, choose_arch_list  # noqa: E402


def test_no_gpu_and_no_list_gives_the_default():
    chosen, message = choose_arch_list({}, 0)
    assert chosen == DEFAULT_ARCH_LIST == "8.0;8.6;8.9;9.0+PTX"
    assert DEFAULT_ARCH_LIST in message and "TORCH_CUDA_ARCH_LIST" in message


def test_a_list_or_a_visible_gpu_is_left_to_torch():
    chosen, message = choose_arch_list({"TORCH_CUDA_ARCH_LIST": "9.0"}, 0)
    assert chosen is None and "TORCH_CUDA_ARCH_LIST=9.0" in message
    chosen, message = choose_arch_list({"TORCH_CUDA_ARCH_LIST": " "}, 1)
    assert chosen is None and "visible GPU" in message


def test_setup_and_readme_use_the_default():
    setup_py = open(os.path.join(ROOT, "setup.py")).read()
    assert "choose_arch_list(os.environ, torch.cuda.device_count())" in setup_py
    assert f"`{DEFAULT_ARCH_LIST}`" in open(os.path.join(ROOT, "README.md")).read()
