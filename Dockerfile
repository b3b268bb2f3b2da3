# cmcd-edge images, multi-stage. No Docker engine runs on the build machines here: documented, not CI-built.
#
#   CPU device image (runtime, predict, bench; the default, last stage):
#       docker build -t cmcd-edge .
#   CPU full toolkit (distill, select-teacher, export; torch CPU pinned by constraints.txt):
#       docker build --target toolkit -t cmcd-edge:toolkit .
#   Jetson device image (L4T JetPack base: TensorRT and CUDA come from the image; cuda-python for device buffers):
#       docker build --build-arg BASE=nvcr.io/nvidia/l4t-jetpack:r36.4.0 --build-arg DEVICE_PIP=cuda-python \
#                    -t cmcd-edge:jetson .
#
#   docker run --rm -v $PWD/bundle:/bundle cmcd-edge bench /bundle
#   docker run --rm --runtime nvidia -v $PWD/bundle:/bundle cmcd-edge:jetson build-engine /bundle --precision int8
#   docker run --rm --runtime nvidia -v $PWD/bundle:/bundle cmcd-edge:jetson bench /bundle --backend tensorrt
ARG BASE=python:3.11-slim

# ---- build: one wheel from the source tree; later stages install it, never the source
FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cmcd_edge cmcd_edge
COPY distill distill
COPY calib calib
COPY export export
COPY runtime runtime
RUN python3 -m pip wheel --no-cache-dir --no-deps -w /wheels .

# ---- toolkit: training and export (x86-64 workstations; on a Jetson, train elsewhere and copy the bundle)
FROM ${BASE} AS toolkit
COPY constraints.txt /tmp/constraints.txt
COPY --from=build /wheels /wheels
RUN whl=$(ls /wheels/cmcd_edge-*.whl) && python3 -m pip install --no-cache-dir -c /tmp/constraints.txt "${whl}[train]" \
    && cmcd-edge --help
ENTRYPOINT ["cmcd-edge"]

# ---- runtime (default): numpy, onnxruntime, click; no torch
FROM ${BASE} AS runtime
ARG DEVICE_PIP=""
COPY --from=build /wheels /wheels
RUN python3 -m pip install --no-cache-dir /wheels/cmcd_edge-*.whl ${DEVICE_PIP} && cmcd-edge --help
ENTRYPOINT ["cmcd-edge"]
