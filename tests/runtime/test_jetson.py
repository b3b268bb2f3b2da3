from cmcd_edge.runtime import jetson

ORIN = ("RAM 2448/7772MB (lfb 1x4MB) SWAP 0/3886MB (cached 0MB) CPU [12%@1190,4%@1190,off,off] EMC_FREQ 0% "
        "GR3D_FREQ 37% cpu@45.5C VDD_IN 4037mW/4037mW VDD_CPU_GPU_CV 479mW/479mW VDD_SOC 1198mW/1198mW")
NANO = "RAM 1707/3964MB (lfb 64x4MB) CPU [9%@1479,5%@1479] GR3D_FREQ 0%@76 POM_5V_IN 2455/2455 POM_5V_GPU 0/0"


def test_parse_orin_line():
    s = jetson.parse_tegrastats(ORIN)
    assert s["ram_used_mb"] == 2448 and s["ram_total_mb"] == 7772 and s["gr3d_pct"] == 37
    assert s["rails_mw"] == {"VDD_IN": 4037, "VDD_CPU_GPU_CV": 479, "VDD_SOC": 1198}
    assert jetson.total_power_mw(s) == 4037


def test_parse_older_nano_line():
    s = jetson.parse_tegrastats(NANO)
    assert s["gr3d_pct"] == 0 and s["rails_mw"]["POM_5V_IN"] == 2455
    assert jetson.total_power_mw(s) == 2455


def test_clocks_locked():
    assert jetson.clocks_locked("cpu0: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600")
    assert not jetson.clocks_locked("cpu0: Online=1 MinFreq=115200 MaxFreq=2201600 CurrentFreq=729600")


def test_detect_on_a_cpu_box():
    assert jetson.detect()["jetson"] is False
