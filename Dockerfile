# cmcd-edge images. No Docker engine runs on the build machines here; these are documented, not CI-built.
#
#   CPU, device side (runtime, predict, bench):   docker build -t cmcd-edge .
#   CPU, full toolkit (distill, export):           docker build --target toolkit -t cmcd-edge:toolkit .
#   Jetson (L4T JetPack base, TensorRT from it):   docker build --build-arg BASE=nvcr.io/nvidia/l4t-jetpack:r36.4.0 -t cmcd-edge:jetson .
#
#   docker run --rm -v $PWD/bundle:/bundle cmcd-edge bench /bundle
ARG BASE=python:3.11-slim

FROM ${BASE} AS runtime
WORKDIR /opt/cmcd-edge
COPY pyproject.toml README.md ./
COPY cmcd_edge cmcd_edge
COPY distill distill
COPY calib calib
COPY export export
COPY runtime runtime
# Device side only: numpy, onnxruntime, click. (On L4T, TensorRT's Python bindings come with the base image.)
RUN python3 -m pip install --no-cache-dir . && cmcd-edge --help
ENTRYPOINT ["cmcd-edge"]

FROM runtime AS toolkit
COPY constraints.txt ./
RUN python3 -m pip install --no-cache-dir -c constraints.txt ".[train]" && cmcd-edge --help
