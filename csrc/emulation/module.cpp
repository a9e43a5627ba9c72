// Makes resnest_cuda._C_emu importable. Loading it registers, through RESNEST_CUDA_KERNELS in every .cu source
// compiled for the host (RESNEST_EMULATE_CUDA), the emulated CUDA kernels as CPU kernels of resnest_emu::<op>;
// resnest_cuda/emulation.py defines those ops' schemas (copied from resnest_cuda::<op>) and loads this module.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C_emu(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_emu", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
