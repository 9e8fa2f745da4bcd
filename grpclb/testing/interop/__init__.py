"""gRPC's interop TestService, for running gRPC's own interop test cases through grpclb.

Every gRPC implementation runs the same interop cases (empty_unary, ping_pong,
cancel_after_first_response, ...; grpc/grpc ``doc/interop-test-descriptions.md``)
against every other. Running them through a grpclb channel shows, case by case,
that the balancing channel behaves as the grpcio channel it replaces.

- ``empty.proto``, ``messages.proto``, ``test.proto``: package ``grpc.testing`` with
  the spec's names and field numbers, cut down to what the cases here use, so a
  real interop client or server interoperates with these.
- ``server``: the ``TestService`` servicer and ``start_servers``, real grpcio
  servers on 127.0.0.2, 127.0.0.3, 127.0.0.4 sharing one port, as a headless
  Service's pods do.

The ``*_pb2*`` modules are generated; regenerate them from the repository root::

    python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \\
        grpclb/testing/interop/empty.proto grpclb/testing/interop/messages.proto \\
        grpclb/testing/interop/test.proto
    python -m grpc_tools.protoc -I. --grpc_python_out=. grpclb/testing/interop/test.proto

then put ``# ruff: noqa`` first in each ``.pyi`` and ``ruff format`` it, as
``scripts/gen_proto.sh`` does for ``echo``. Only ``test.proto`` declares
services, so only it gets a ``_pb2_grpc`` module.

Registering these files puts ``grpc.testing.*`` in protobuf's default pool: a
process that also imports grpc's own interop protos (grpcio-tests) would see two
definitions of one name, so keep the two apart.
"""
