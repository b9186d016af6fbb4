"""Beam's EXTERNAL worker pool, listening on loopback only.

`python -m apache_beam.runners.worker.worker_pool_main` binds every interface (`[::]`) and has no
flag to change that; every service the project starts listens on 127.0.0.1 only. This entry point
serves Beam's own servicer (`BeamFnExternalWorkerPoolServicer`: one SDK worker process per
StartWorker request from the TaskManager) on a gRPC server bound to 127.0.0.1, with the options
Beam's pool sets. The SDK worker processes stay in this process's group, which `lakehouse down`
stops as a whole. In production the pool is a sidecar of the TaskManager pod and Beam's module
serves it unchanged (infra/k8s/flink-session.yaml).
"""

from __future__ import annotations

import argparse
import logging

import grpc
from apache_beam.portability.api import beam_fn_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
from apache_beam.utils import thread_pool_executor

log = logging.getLogger(__name__)

# As Beam's pool: the runner's keep-alive pings on an idle channel are not abuse.
_GRPC_OPTIONS = [("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)]


def serve(port: int, host: str = "127.0.0.1") -> grpc.Server:
    server = grpc.server(thread_pool_executor.shared_unbounded_instance(), options=_GRPC_OPTIONS)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise SystemExit(f"beam worker pool: cannot listen on {host}:{port}")
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(BeamFnExternalWorkerPoolServicer(use_process=True), server)
    server.start()
    log.info("Beam worker pool listening on %s:%s", host, port)
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Beam's EXTERNAL worker pool on loopback (cluster mode).")
    parser.add_argument("--service_port", type=int, required=True, help="port on 127.0.0.1")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(arguments.service_port).wait_for_termination()


if __name__ == "__main__":
    main()
