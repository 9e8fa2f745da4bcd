"""grpclb.testing.local_pods and its pytest fixture: the helpers users test their code with."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import grpc
import pytest

import grpclb
from grpclb.testing import echo_pb2, echo_pb2_grpc, local_pods
from grpclb.testing.local import pod_hosts

ROOT = Path(__file__).resolve().parents[2]


class Named(echo_pb2_grpc.EchoServicer):
    """A user's servicer: replies with the pod it runs in."""

    def __init__(self, address: str) -> None:
        self.address = address

    def Unary(self, request, context):
        return echo_pb2.EchoReply(pod=self.address, message=request.message)


def test_pods_on_distinct_loopback_ips_behind_a_static_target():
    with local_pods(echo_pb2_grpc.add_EchoServicer_to_server, make_servicer=Named) as pods:
        assert pods.target == "ipv4:" + ",".join(pods.addresses)
        assert len({a.rsplit(":", 1)[0] for a in pods.addresses}) == 3  # Linux: one IP each
        with grpclb.channel(pods.target, policy="round_robin") as channel:
            channel.wait_for_endpoints(min_ready=None, timeout=10)
            echo = echo_pb2_grpc.EchoStub(channel)
            served = Counter(echo.Unary(echo_pb2.EchoRequest(), timeout=5).pod for _ in range(9))
        assert served == dict.fromkeys(pods.addresses, 3)


def test_one_shared_servicer_serves_every_pod():
    servicer = Named("shared")
    add = echo_pb2_grpc.add_EchoServicer_to_server
    with (
        local_pods(add, servicer, n=2) as pods,
        grpclb.channel(pods.target, policy="round_robin") as channel,
    ):
        channel.wait_for_endpoints(min_ready=None, timeout=10)
        echo = echo_pb2_grpc.EchoStub(channel)
        assert {echo.Unary(echo_pb2.EchoRequest(), timeout=5).pod for _ in range(4)} == {"shared"}
        assert all(row.calls for row in channel.stats())


def test_a_stopped_pod_takes_no_more_calls():
    add = echo_pb2_grpc.add_EchoServicer_to_server
    with local_pods(add, make_servicer=Named, n=2) as pods, grpclb.channel(pods.target) as channel:
        channel.wait_for_endpoints(min_ready=None, timeout=10)
        pods.stop(0)
        echo = echo_pb2_grpc.EchoStub(channel)
        # A call that still picks the stopped pod fails UNAVAILABLE and is retried elsewhere.
        replies = {echo.Unary(echo_pb2.EchoRequest(), timeout=5).pod for _ in range(10)}
        assert replies == {pods.addresses[1]}
    # After the block every pod is stopped: a plain channel cannot reach one.
    with grpc.insecure_channel(pods.addresses[1]) as plain, pytest.raises(grpc.RpcError):
        echo_pb2_grpc.EchoStub(plain).Unary(echo_pb2.EchoRequest(), timeout=1)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="servicer"), local_pods(lambda s, srv: None):
        pass
    with pytest.raises(ValueError, match="n must"):
        pod_hosts(0)


def test_the_pytest_fixture_as_a_user_enables_it(tmp_path):
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import grpclb
            from grpclb.testing import echo_pb2, echo_pb2_grpc

            pytest_plugins = ["grpclb.testing.pytest_plugin"]


            class Echo(echo_pb2_grpc.EchoServicer):
                def Unary(self, request, context):
                    return echo_pb2.EchoReply(message=request.message)


            def test_my_code(grpclb_local_pods):
                pods = grpclb_local_pods(echo_pb2_grpc.add_EchoServicer_to_server, Echo(), n=2)
                with grpclb.channel(pods.target) as channel:
                    channel.wait_for_endpoints(min_ready=2, timeout=10)
                    reply = echo_pb2_grpc.EchoStub(channel).Unary(
                        echo_pb2.EchoRequest(message="hi"), timeout=5
                    )
                assert reply.message == "hi"
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
