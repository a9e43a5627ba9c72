// Makes resnest_cuda._C importable as a Python module. The ops themselves are registered with the
// dispatcher through TORCH_LIBRARY when the shared library is loaded; no Python bindings live here.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
