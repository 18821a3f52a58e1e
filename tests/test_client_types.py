"""``pushserver.d.ts`` against TypeScript's own checker (``tsc --strict``, from npm at test
time): code using the client as documented type-checks, through the module's types and
through the global ``PushServer``; misuse does not."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.browser.npm import npm_package

STATIC = Path(__file__).resolve().parent.parent / "pushserver" / "static" / "pushserver"

GOOD = """
import client, {subscribe, type Message, type Gap, type Subscription} from './pushserver';

const subscription: Subscription = subscribe('https://push.example/updates/news,sport', {
    transport: 'eventsource',
    withCredentials: true,
    events: ['tick'],
    resume: true,
    onMessage(message: Message) {
        const text: string = message.text();
        const parsed = message.json<{n: number}>();
        const n: number = parsed.n;
        const type: string | null = message.contentType;
        console.log(text, n, type, message.channel, message.id, message.event, this.channels);
    },
    onGap(gap: Gap) { console.log(gap.after, gap.next); },
    onDeleted(channel: string) { console.log(channel); },
    onError(kind, detail) { console.log(kind.toUpperCase(), detail); },
});
subscription.subscribe('weather');
const position: string = subscription.position('news');
subscription.close();
const same: typeof client.subscribe = PushServer.subscribe;  // the global, declared too
console.log(position, same, client.subprotocol);
"""

BAD = """
import {subscribe} from './pushserver';
subscribe('https://push.example/updates/news', {transport: 'carrier-pigeon'});
subscribe('https://push.example/updates/news').subscribe(3);
"""


def tsc(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is missing")
    compiler = npm_package("typescript") / "bin" / "tsc"
    shutil.copy(STATIC / "pushserver.d.ts", tmp_path / "pushserver.d.ts")
    (tmp_path / "usage.ts").write_text(source)
    return subprocess.run(
        [
            node,
            str(compiler),
            "--noEmit",
            "--strict",
            "--target",
            "es2020",
            "--lib",
            "es2020,dom",
            "--module",
            "esnext",
            "--moduleResolution",
            "bundler",
            str(tmp_path / "usage.ts"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_documented_use_type_checks(tmp_path):
    result = tsc(tmp_path, GOOD)
    assert result.returncode == 0, result.stdout + result.stderr


def test_misuse_does_not(tmp_path):
    result = tsc(tmp_path, BAD)
    assert result.returncode != 0
    assert "carrier-pigeon" in result.stdout
    assert "usage.ts(4," in result.stdout  # subscribe(3): a number is no channel id
