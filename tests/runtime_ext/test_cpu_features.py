"""detect_cpu_features: pure parsing of captured /proc/cpuinfo samples."""

from __future__ import annotations

import platform

import pytest

from qcompile.runtime_ext.cpu_features import CpuFeatures, detect_cpu_features, normalize_machine

X86_VNNI = """\
processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 9R14
flags		: fpu vme de pse tsc msr pae sse sse2 ht syscall nx lm ssse3 fma sse4_1 sse4_2 avx f16c avx2 \
avx512f avx512dq avx512cd avx512bw avx512vl avx_vnni avx512_bf16 avx512_vnni avx512_bitalg
bugs		: sysret_ss_attrs

processor	: 1
vendor_id	: AuthenticAMD
flags		: fpu vme de pse tsc msr pae sse sse2 ht syscall nx lm ssse3 fma sse4_1 sse4_2 avx f16c avx2 \
avx512f avx512dq avx512cd avx512bw avx512vl avx_vnni avx512_bf16 avx512_vnni avx512_bitalg
"""

X86_AVX2_ONLY = """\
processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz
flags		: fpu vme de pse tsc msr sse sse2 ss ht syscall nx lm pni ssse3 fma sse4_1 sse4_2 avx f16c rdrand avx2 bmi2
"""

X86_AVX_VNNI_NO_AVX512 = """\
processor	: 0
vendor_id	: GenuineIntel
model name	: 12th Gen Intel(R) Core(TM) i7-12700
flags		: fpu sse sse2 lm ssse3 fma sse4_1 sse4_2 avx avx2 avx_vnni
"""

ARM_DOTPROD = """\
processor	: 0
BogoMIPS	: 243.75
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x3
CPU part	: 0xd0c

processor	: 1
BogoMIPS	: 243.75
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU architecture: 8
"""

ARM_NO_DOT = """\
processor	: 0
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU part	: 0xd08
"""


def test_x86_with_vnni() -> None:
    assert detect_cpu_features(X86_VNNI) == CpuFeatures(arch="x86_64", avx2=True, avx512=True, vnni=True)


def test_x86_avx2_without_vnni() -> None:
    f = detect_cpu_features(X86_AVX2_ONLY)
    assert f == CpuFeatures(arch="x86_64", avx2=True, avx512=False, vnni=False, arm_dot=False)


def test_avx_vnni_counts_as_vnni_without_avx512() -> None:
    f = detect_cpu_features(X86_AVX_VNNI_NO_AVX512)
    assert (f.avx2, f.avx512, f.vnni) == (True, False, True)


def test_arm64_with_asimddp() -> None:
    assert detect_cpu_features(ARM_DOTPROD) == CpuFeatures(arch="aarch64", arm_dot=True)


def test_arm64_without_dotprod_and_macos_style_flag() -> None:
    assert detect_cpu_features(ARM_NO_DOT) == CpuFeatures(arch="aarch64", arm_dot=False)
    assert detect_cpu_features("Features: fp asimd dotprod\n", machine="arm64").arm_dot


def test_flags_are_intersection_over_processors() -> None:
    hybrid = X86_AVX2_ONLY + "\nprocessor\t: 1\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse sse2 lm avx\n"
    assert detect_cpu_features(hybrid).avx2 is False


def test_machine_argument_overrides_and_is_normalized() -> None:
    assert detect_cpu_features(X86_VNNI, machine="AMD64").arch == "x86_64"
    # flags of another architecture are not misread
    assert detect_cpu_features(X86_VNNI, machine="aarch64") == CpuFeatures(arch="aarch64")
    assert detect_cpu_features(ARM_DOTPROD, machine="x86_64") == CpuFeatures(arch="x86_64")


@pytest.mark.parametrize(
    ("raw", "norm"),
    [("AMD64", "x86_64"), ("x86_64", "x86_64"), ("arm64", "aarch64"), ("i686", "x86"), ("riscv64", "riscv64")],
)
def test_normalize_machine(raw: str, norm: str) -> None:
    assert normalize_machine(raw) == norm


def test_unknown_text_falls_back_to_platform_with_no_flags() -> None:
    f = detect_cpu_features("", machine=None)
    assert f.arch == normalize_machine(platform.machine())
    assert not (f.avx2 or f.avx512 or f.vnni or f.arm_dot)
    assert detect_cpu_features("garbage without colons", machine="ppc64le") == CpuFeatures(arch="ppc64le")


def test_live_host_does_not_raise() -> None:
    f = detect_cpu_features()
    assert isinstance(f, CpuFeatures) and f.arch
    with pytest.raises(AttributeError):
        f.avx2 = True  # type: ignore[misc]  # frozen
