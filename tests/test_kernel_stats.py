"""The parsers of benchmarks/kernel_stats.py on captured ptxas -v and cuobjdump -sass output (shortened)."""

from benchmarks import kernel_stats as ks

PTXAS = """\
ptxas info    : Compiling entry function '_Z1kILi8EEvPf' for 'sm_90'
ptxas info    : Function properties for _Z1kILi8EEvPf
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 70 registers, used 1 barriers, 32 bytes smem
ptxas info    : Compile time = 133.883 ms
ptxas info    : Compiling entry function '_Z1gv' for 'sm_90'
ptxas info    : Function properties for _Z1gv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers
"""

# A grid-stride loop (0x0030 .. 0x00c0) with a 64-bit division site (fast 32-bit path inline, the routine at
# 0x0100 called otherwise), two MUFU ops and a 16-byte store; then the routine and the end-of-function padding.
SASS = """\
\t\tFunction : _Z1kILi8EEvPf
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                      /* 0x00000a00ff017b82 */
                                                                               /* 0x000fe20000000800 */
        /*0010*/              @!P0 EXIT ;                                      /* 0x000000000000894d */
        /*0020*/                   NOP ;                                       /* 0x0000000000007918 */
        /*0030*/              @!P1 BRA 0x60 ;                                  /* 0x0000000000007918 */
        /*0040*/                   CALL.REL.NOINC 0x100 ;                      /* 0x0000000000007918 */
        /*0050*/                   BRA 0x80 ;                                  /* 0x0000000000007918 */
        /*0060*/                   I2F.U32.RP R3, R6 ;                         /* 0x0000000000007918 */
        /*0070*/                   MUFU.RCP R3, R3 ;                           /* 0x0000000000007918 */
        /*0080*/              @P2 MUFU.EX2 R4, R4 ;                            /* 0x0000000000007918 */
        /*0090*/                   STG.E.128 desc[UR4][R8.64], R12 ;           /* 0x0000000000007918 */
        /*00a0*/                   ISETP.GE.AND P0, PT, R2, UR5, PT ;          /* 0x0000000000007918 */
        /*00b0*/                   IADD3 R2, R2, 0x1, RZ ;                     /* 0x0000000000007918 */
        /*00c0*/              @!P0 BRA 0x30 ;                                  /* 0x0000000000007918 */
        /*00d0*/                   EXIT ;                                      /* 0x0000000000007918 */
        /*0100*/                   I2F.U64.RP R15, R10 ;                       /* 0x0000000000007918 */
        /*0110*/                   MUFU.RCP R15, R15 ;                         /* 0x0000000000007918 */
        /*0120*/                   RET.REL.NODEC R12 0x0 ;                     /* 0x0000000000007918 */
        /*0130*/                   BRA 0x130;                                  /* 0x0000000000007918 */
        /*0140*/                   NOP;                                        /* 0x0000000000007918 */
\t\t..........
\t\tFunction : _Z1gv
        /*0000*/                   EXIT ;                                      /* 0x0000000000007918 */
"""


def test_parse_ptxas():
    info = ks.parse_ptxas(PTXAS)
    assert info["_Z1kILi8EEvPf"] == dict(registers=70, stack_bytes=8, spill_stores=4, spill_loads=12, smem_bytes=32)
    assert info["_Z1gv"] == dict(registers=32, stack_bytes=0, spill_stores=0, spill_loads=0, smem_bytes=0)


def test_parse_and_analyse_sass():
    funcs = ks.parse_sass(SASS)
    assert set(funcs) == {"_Z1kILi8EEvPf", "_Z1gv"}
    stats = ks.analyse_sass(funcs["_Z1kILi8EEvPf"], vector=8)
    assert stats["sass_instructions"] == 17  # NOPs excluded, subroutine and padding branch included
    assert stats["mufu"] == {"RCP": 2, "EX2": 1}
    assert stats["div64_sites"] == 1 and stats["div64_in_loops"] == 1
    # loop 0x30..0xc0: 10 instructions, 2 MUFU, one 16-byte store of 8 elements
    assert stats["elements_per_iteration"] == 8
    assert stats["loop_instructions"] == 10 and stats["loop_mufu"] == 2
    assert ks.analyse_sass(funcs["_Z1gv"]) == dict(sass_instructions=1, mufu={}, div64_sites=0, div64_in_loops=0)


def test_short_name_and_vector():
    name = ks.short_name("void resnest_cuda::(anonymous namespace)::combine_nhwc_kernel<8, c10::Half>"
                         "(c10::Half const*, float const*, c10::Half*, resnest_cuda::(anonymous namespace)::Dims)")
    assert name == "combine_nhwc_kernel<8, c10::Half>"
    assert ks.first_template_int(name) == 8
