#!/bin/bash
# measurement driver, core 1, real-time priority; one measurement at a time
cd /work/main
R="chrt -f 1 taskset -c 1 .venv/bin/spnas"
L=/work/logs/m
FP32LUT=outputs/validate/2026-12-03/17-51-01/lut.json
stamp() { echo "=== $(date -u +%H:%M:%S) $*" >> $L/driver.log; }
tries() {
  for net in spnasnet_100 mnasnet_100; do
    stamp "latency fp32 timm:$net try $1"
    $R latency arch=timm:$net space=mnasnet num_classes=1000 hardware.lut_path=$FP32LUT progress=false hydra.run.dir=$L/latency_fp32_${net}_try$1 > $L/latency_fp32_${net}_try$1.log 2>&1
  done
}
while pgrep -f "validate-runtime-model space=mnasnet" > /dev/null; do sleep 10; done
stamp "start"
tries 1
stamp "cifar fp32 s0"; $R validate-runtime-model space=cifar n=100 seed=0 progress=false hydra.run.dir=$L/val_cifar_fp32_s0 > $L/val_cifar_fp32_s0.log 2>&1
stamp "cifar int8 s0"; $R validate-runtime-model space=cifar n=100 seed=0 hardware=cpu_onnx_int8 progress=false hydra.run.dir=$L/val_cifar_int8_s0 > $L/val_cifar_int8_s0.log 2>&1
tries 2
stamp "tiny int8 s1 100x4"; $R validate-runtime-model space=tiny n=100 seed=1 hardware=cpu_onnx_int8 hardware.backend.sessions=4 hardware.backend.repeats=100 progress=false hydra.run.dir=$L/val_tiny_int8_s1_r100x4 > $L/val_tiny_int8_s1_r100x4.log 2>&1
stamp "tiny fp32 s0 100x4"; $R validate-runtime-model space=tiny n=100 seed=0 hardware.backend.sessions=4 hardware.backend.repeats=100 progress=false hydra.run.dir=$L/val_tiny_fp32_s0_r100x4 > $L/val_tiny_fp32_s0_r100x4.log 2>&1
stamp "profile int8 tiny i1"; $R profile-lut space=tiny in_channels=1 num_classes=10 hardware=cpu_onnx_int8 progress=false hydra.run.dir=$L/profile_tiny_int8 > $L/profile_tiny_int8.log 2>&1
stamp "protocol mnasnet"; chrt -f 1 taskset -c 1 .venv/bin/python scripts/bench_latency_drift.py --space mnasnet --num-classes 1000 --protocol timm:spnasnet_100 --repetitions 0 --alternations 2 --json docs/measurements/drift_protocol_mnasnet.json > $L/drift_protocol_mnasnet.log 2>&1
stamp "temporal tiny idle"; chrt -f 1 taskset -c 1 .venv/bin/python scripts/bench_latency_drift.py --space tiny --repetitions 4 --interval 120 --json docs/measurements/drift_temporal_tiny_idle.json > $L/drift_temporal_tiny_idle.log 2>&1
tries 3
stamp "lut-mode mnasnet validation"; $R validate-runtime-model space=mnasnet num_classes=1000 n=30 seed=1 hardware.lut_path=$FP32LUT progress=false hydra.run.dir=$L/val_mnasnet_fp32_lut_s1 > $L/val_mnasnet_fp32_lut_s1.log 2>&1
stamp "done"
