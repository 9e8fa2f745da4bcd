#!/usr/bin/env bash
# Regenerates the Python modules of grpclb/testing/echo.proto and of gRPC's interop
# protos in grpclb/testing/interop/.
# Run from anywhere; protoc must see the repository root as the include path
# so the generated grpc module imports `from grpclb.testing import echo_pb2`.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
"$python" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
    grpclb/testing/echo.proto
"$python" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \
    grpclb/testing/interop/empty.proto grpclb/testing/interop/messages.proto \
    grpclb/testing/interop/services.proto
"$python" -m grpc_tools.protoc -I. --grpc_python_out=. grpclb/testing/interop/services.proto
grep -q '^from grpclb.testing import echo_pb2 ' grpclb/testing/echo_pb2_grpc.py || {
    echo "echo_pb2_grpc.py does not import echo_pb2 by package path" >&2
    exit 1
}
# protoc's stub style (Optional[...], long lines) is not the project's; keep
# ruff's lint off the generated stub and let its formatter tidy it when present.
for stub in grpclb/testing/echo_pb2.pyi grpclb/testing/interop/*_pb2.pyi; do
    { echo "# ruff: noqa"; cat "$stub"; } > "$stub.tmp" && mv "$stub.tmp" "$stub"
    if "$python" -m ruff --version >/dev/null 2>&1; then
        "$python" -m ruff format --quiet "$stub"
    fi
done
