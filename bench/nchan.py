"""nchan under the same load: Debian's nginx + libnginx-mod-nchan, one worker on CPU 0.

The config gives nchan the same URLs as ours (``/pub/<id>``, ``/sub/<id>``) and a
1,000-message buffer per channel, and keeps every file nginx writes in a temp dir.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import children

NGINX = "/usr/sbin/nginx"
MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"

CONFIG = """\
load_module {module};
user root;
worker_processes 1;
{affinity}
worker_rlimit_nofile {nofile};
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{
    worker_connections {connections};
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    nchan_shared_memory_size 256M;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location ~ ^/pub/(.+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
            nchan_message_buffer_length 1000;
            nchan_message_timeout 1h;
        }}
        location ~ ^/sub/(.+)$ {{
            nchan_subscriber;
            nchan_channel_id $1;
        }}
    }}
}}
"""


def available() -> bool:
    return os.path.exists(NGINX) and os.path.exists(MODULE)


def version() -> str:
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True)
    nginx = out.stderr.strip().rsplit("/", 1)[-1]
    try:
        dpkg = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-nchan"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        dpkg = ""
    return f"nginx {nginx}, libnginx-mod-nchan {dpkg or 'unknown'}"


class Nchan:
    """One nginx master + one worker; ``worker_pid`` is what the bench measures."""

    def __init__(self, port: int, cpu: int, nofile: int, pin: list[str] | None = None) -> None:
        self.port = port
        self.pin = pin or []
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-nchan-")
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.mkdir(os.path.join(self.tmp.name, sub))
        affinity = "".join("1" if i == cpu else "0" for i in reversed(range(max(cpu + 1, 1))))
        conf = CONFIG.format(
            module=MODULE,
            affinity=f"worker_cpu_affinity {affinity};" if self.pin else "",
            nofile=nofile,
            connections=max(1024, nofile - 100),
            tmp=self.tmp.name,
            port=port,
        )
        Path(self.tmp.name, "nginx.conf").write_text(conf)
        self.process: subprocess.Popen[bytes] | None = None
        self.worker_pid = 0

    def start(self, timeout: float = 10.0) -> Nchan:
        self.process = subprocess.Popen(
            [
                *self.pin,
                NGINX,
                "-p",
                self.tmp.name,
                "-c",
                "nginx.conf",
                "-e",
                f"{self.tmp.name}/error.log",
                "-g",
                "daemon off;",
            ],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.error_log()}")
            workers = children(self.process.pid)
            if workers:
                self.worker_pid = workers[0]
                return self
            time.sleep(0.05)  # polling the process table for the worker, not synchronising
        raise RuntimeError("nginx started no worker")

    def error_log(self) -> str:
        try:
            return Path(self.tmp.name, "error.log").read_text()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.tmp.cleanup()
