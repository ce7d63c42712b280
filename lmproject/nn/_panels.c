/* y = x Wᵀ for 1-16 rows, with W stored in panels of 16 output columns (lmproject/nn/panel_linear.py).
 *
 * Panel p holds outputs 16p..16p+15: for each input k, their 16 weights side by side (d_in x 16 floats,
 * contiguous). One panel is read front to back, one 64-byte vector per k, while the ROWS x 16 sums stay in
 * AVX-512 registers: every weight is read once for all the rows, in one sequential stream the hardware
 * prefetches well. Each sum runs over k in order, one fused multiply-add at a time.
 *
 * The kernels are compiled for AVX-512F whatever the compiler's default target, and run only where
 * `supported()` says the CPU has it; elsewhere (and where this file is not built) panel_linear.py uses torch.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define PANEL 16
#define MAX_ROWS 16
/* How far ahead of the reads to prefetch: far enough to cover the memory's latency. Past a panel's end
 * this is the next panel (an address only: a prefetch never faults). */
#define PREFETCH_BYTES 4096

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_KERNELS 1

typedef void (*panel_kernel)(const float *, const float *, float *, Py_ssize_t, Py_ssize_t, __mmask16);

/* One panel's ROWS x 16 outputs; `columns` masks off the ones past d_out in the last panel. */
#define PANEL_KERNEL(ROWS)                                                                               \
    __attribute__((target("avx512f"))) static void panel_##ROWS(                                       \
        const float *x, const float *panel, float *y, Py_ssize_t d_in, Py_ssize_t d_out,              \
        __mmask16 columns) {                                                                           \
        __m512 sums[ROWS];                                                                             \
        for (int r = 0; r < ROWS; r++) sums[r] = _mm512_setzero_ps();                                  \
        for (Py_ssize_t k = 0; k < d_in; k++) {                                                        \
            _mm_prefetch((const char *)((uintptr_t)(panel + k * PANEL) + PREFETCH_BYTES), _MM_HINT_T0);\
            __m512 w = _mm512_loadu_ps(panel + k * PANEL);                                             \
            for (int r = 0; r < ROWS; r++)                                                             \
                sums[r] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * d_in + k]), w, sums[r]);                \
        }                                                                                              \
        for (int r = 0; r < ROWS; r++) _mm512_mask_storeu_ps(y + r * d_out, columns, sums[r]);         \
    }

PANEL_KERNEL(1) PANEL_KERNEL(2) PANEL_KERNEL(3) PANEL_KERNEL(4) PANEL_KERNEL(5) PANEL_KERNEL(6)
PANEL_KERNEL(7) PANEL_KERNEL(8) PANEL_KERNEL(9) PANEL_KERNEL(10) PANEL_KERNEL(11) PANEL_KERNEL(12)
PANEL_KERNEL(13) PANEL_KERNEL(14) PANEL_KERNEL(15) PANEL_KERNEL(16)

/* By row count: a fixed count lets the compiler keep every sum in a register. */
static const panel_kernel KERNELS[MAX_ROWS + 1] = {
    NULL,      panel_1,  panel_2,  panel_3,  panel_4,  panel_5,  panel_6,  panel_7, panel_8,
    panel_9,   panel_10, panel_11, panel_12, panel_13, panel_14, panel_15, panel_16,
};
#endif

static PyObject *supported(PyObject *self, PyObject *args) {
#ifdef HAVE_KERNELS
    return PyBool_FromLong(__builtin_cpu_supports("avx512f"));
#else
    Py_RETURN_FALSE;
#endif
}

/* matmul(x, panels, y, rows, d_in, d_out): addresses of float32 buffers x (rows, d_in), panels
 * (ceil(d_out / 16), d_in, 16) and y (rows, d_out), all contiguous; the caller checks them. */
static PyObject *matmul(PyObject *self, PyObject *args) {
    Py_ssize_t x_addr, panels_addr, y_addr, rows, d_in, d_out;
    if (!PyArg_ParseTuple(args, "nnnnnn", &x_addr, &panels_addr, &y_addr, &rows, &d_in, &d_out))
        return NULL;
    if (rows < 1 || rows > MAX_ROWS || d_in < 1 || d_out < 1) {
        PyErr_Format(PyExc_ValueError, "matmul: 1-%d rows and positive sizes, got %zd x %zd -> %zd", MAX_ROWS,
                     rows, d_in, d_out);
        return NULL;
    }
#ifdef HAVE_KERNELS
    if (!__builtin_cpu_supports("avx512f")) {
        PyErr_SetString(PyExc_RuntimeError, "matmul: this CPU has no AVX-512F");
        return NULL;
    }
    const float *x = (const float *)x_addr, *panels = (const float *)panels_addr;
    float *y = (float *)y_addr;
    panel_kernel kernel = KERNELS[rows];
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t first = 0; first < d_out; first += PANEL) {
        Py_ssize_t width = d_out - first < PANEL ? d_out - first : PANEL;
        kernel(x, panels + first * d_in, y + first, d_in, d_out, (__mmask16)((1u << width) - 1));
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
#else
    PyErr_SetString(PyExc_RuntimeError, "matmul: built without the AVX-512 kernels (not x86-64)");
    return NULL;
#endif
}

static PyMethodDef methods[] = {
    {"supported", supported, METH_NOARGS, "Whether this CPU runs the kernels (AVX-512F)."},
    {"matmul", matmul, METH_VARARGS, "y = x W^T from W's panels, for 1-16 rows (addresses, sizes)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_panels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__panels(void) { return PyModule_Create(&module); }
