"""The compose deployment's Redis users (``docker/redis/users.acl``) against a real server.

A throwaway ``redis-server`` on a free loopback port loads the ACL file that the real
``docker/redis/start.sh`` renders from the real template (with test passwords), and
:class:`~ess.policystore.redis_store.RedisPolicyStore` checks what each user can and cannot
do: the projector writes the record and announces it, a gate reads and follows it but can
write nothing, nobody gets in without a password. Needs the ``redis-server`` binary (CI has
it); the shared test Redis is not touched.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, RedisError

from ess.api.protocols import EMERGENCY_STOP_KEY
from ess.policystore import (
    CHANNEL,
    PolicyStoreError,
    PolicyStoreUnavailable,
    RedisPolicyStore,
)
from tests.fixtures.redis import closed_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REDIS_DIR = ROOT / "docker" / "redis"
TEMPLATE = REDIS_DIR / "users.acl"
START = REDIS_DIR / "start.sh"
#: The only rule of the file that needs Redis 7.2+ (CLIENT SETINFO); compose runs 7.4.
SETINFO_RULE = "+client|setinfo"

RECORD = {"active": False, "seq": 7, "reason": None}


@dataclass(frozen=True)
class AclRedis:
    port: int
    passwords: dict[str, str]  # environment variable -> test password
    aclfile: Path

    def url(self, user: str | None = None, password: str | None = None) -> str:
        if user is None:
            return f"redis://127.0.0.1:{self.port}/0"
        if password is None:
            password = self.passwords[_password_var(user)]
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/0"


def _password_var(user: str) -> str:
    """The template's variable for a user: ``ess-projector`` -> ``REDIS_PROJECTOR_PASSWORD``."""
    line = next(
        line for line in TEMPLATE.read_text().splitlines() if line.startswith(f"user {user} ")
    )
    match = re.search(r">\$\{([A-Z0-9_]+)\}", line)
    assert match, f"no password placeholder for {user}"
    return match.group(1)


def _server_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out.stdout)
    assert match, out.stdout
    return tuple(int(part) for part in match.groups())


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is required for the Redis ACL test (apt-get install redis-server)",
            pytrace=False,
        )
    workdir = tmp_path_factory.mktemp("redis-acl")
    aclfile = workdir / "users.acl"
    rules = [line for line in TEMPLATE.read_text().splitlines() if line.startswith("user ")]
    variables = sorted(set(re.findall(r">\$\{([A-Z0-9_]+)\}", "\n".join(rules))))
    passwords = {name: f"test-{secrets.token_hex(12)}" for name in variables}
    rendered = subprocess.run(
        ["sh", str(START), "--render-only"],
        env={
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "ESS_REDIS_ACL_TEMPLATE": str(TEMPLATE),
            "ESS_REDIS_ACL_FILE": str(aclfile),
            **passwords,
        },
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    if _server_version(binary) < (7, 2):
        # CLIENT SETINFO (what redis-py sends on connect) exists from Redis 7.2 on; an older
        # server rejects the whole file for naming it. Everything else is tested as written.
        aclfile.write_text(aclfile.read_text().replace(f" {SETINFO_RULE}", ""))
    port = closed_port()
    log_path = workdir / "redis.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--aclfile",
                str(aclfile),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = AclRedis(port, passwords, aclfile)
    try:
        _wait_until_ready(server, process, log_path)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait_until_ready(server: AclRedis, process: subprocess.Popen[bytes], log: Path) -> None:
    admin = redis.Redis.from_url(server.url("ess-admin"), socket_timeout=0.5)
    deadline = time.monotonic() + 10.0
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"redis-server exited: {log.read_text()[-2000:]}", pytrace=False)
            try:
                if admin.ping():
                    return
            except RedisError:
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not answer: {log.read_text()[-2000:]}")
                time.sleep(0.05)
    finally:
        admin.close()


@asynccontextmanager
async def _raw(url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client with ``url``'s credentials, to try commands the store never sends."""
    client = aioredis.Redis.from_url(url, socket_timeout=2, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def _denied(client: aioredis.Redis, *command: Any) -> None:
    with pytest.raises(NoPermissionError):
        await client.execute_command(*command)


# --------------------------------------------------------------------------- the file


def test_the_rendered_file_holds_hashes_not_passwords(acl_redis: AclRedis) -> None:
    text = acl_redis.aclfile.read_text()
    for password in acl_redis.passwords.values():
        assert password not in text
        assert "#" + hashlib.sha256(password.encode()).hexdigest() in text
    assert "${" not in text
    assert not [line for line in text.splitlines() if not line.startswith("user ")]


# --------------------------------------------------------------------------- projector


async def test_the_projector_writes_the_record_and_the_write_is_announced(
    acl_redis: AclRedis,
) -> None:
    async with (
        RedisPolicyStore(acl_redis.url("ess-projector")) as projector,
        RedisPolicyStore(acl_redis.url("ess-gate")) as gate,
    ):
        async with gate.notifications() as notifications:
            await projector.set(EMERGENCY_STOP_KEY, RECORD)
            announced = await asyncio.wait_for(anext(notifications), timeout=2.0)
        assert announced == EMERGENCY_STOP_KEY
        assert await projector.get(EMERGENCY_STOP_KEY) == RECORD
        assert await gate.get(EMERGENCY_STOP_KEY) == RECORD
        await projector.ping()


async def test_the_projector_can_write_nothing_else(acl_redis: AclRedis) -> None:
    url = acl_redis.url("ess-projector")
    async with RedisPolicyStore(url, namespace="other:") as elsewhere:
        with pytest.raises(PolicyStoreError):
            await elsewhere.set(EMERGENCY_STOP_KEY, RECORD)
        with pytest.raises(PolicyStoreError):
            await elsewhere.get(EMERGENCY_STOP_KEY)
    async with _raw(url) as client:
        await _denied(client, "DEL", EMERGENCY_STOP_KEY)
        await _denied(client, "SET", "some_other_key", "1")
        await _denied(client, "GET", "some_other_key")
        await _denied(client, "PUBLISH", "some:other:channel", "x")
        await _denied(client, "SUBSCRIBE", CHANNEL)
        await _denied(client, "FLUSHALL")
        await _denied(client, "CONFIG", "SET", "appendonly", "yes")
        await _denied(client, "ACL", "SETUSER", "ess-gate", "+set")


# --------------------------------------------------------------------------- gate


async def test_a_gate_reads_and_follows_the_record_but_cannot_write_it(
    acl_redis: AclRedis,
) -> None:
    async with (
        RedisPolicyStore(acl_redis.url("ess-projector")) as projector,
        RedisPolicyStore(acl_redis.url("ess-gate")) as gate,
    ):
        await projector.set(EMERGENCY_STOP_KEY, RECORD)
        async with gate.notifications():
            pass  # subscribing to the channel is allowed
        with pytest.raises(PolicyStoreError, match="no permissions") as refused:
            await gate.set(EMERGENCY_STOP_KEY, {**RECORD, "seq": 8})
        # A refusal, not an outage: the server answered.
        assert not isinstance(refused.value, PolicyStoreUnavailable)
        assert await gate.get(EMERGENCY_STOP_KEY) == RECORD


async def test_a_gate_cannot_touch_any_other_key_or_channel(acl_redis: AclRedis) -> None:
    url = acl_redis.url("ess-gate")
    async with RedisPolicyStore(url, namespace="other:") as elsewhere:
        with pytest.raises(PolicyStoreError):
            await elsewhere.get(EMERGENCY_STOP_KEY)
        with pytest.raises(PolicyStoreError):
            await elsewhere.set(EMERGENCY_STOP_KEY, RECORD)
        with pytest.raises(PolicyStoreError):
            async with elsewhere.notifications():
                pass
    async with _raw(url) as client:
        await _denied(client, "SET", EMERGENCY_STOP_KEY, "{}")
        await _denied(client, "DEL", EMERGENCY_STOP_KEY)
        await _denied(client, "EXPIRE", EMERGENCY_STOP_KEY, "1")
        # A forged "the record changed" hint would only make gates re-read, but still: no.
        await _denied(client, "PUBLISH", CHANNEL, EMERGENCY_STOP_KEY)
        await _denied(client, "GET", "some_other_key")
        await _denied(client, "SET", "some_other_key", "1")
        await _denied(client, "KEYS", "*")
        await _denied(client, "FLUSHALL")


# --------------------------------------------------------------------------- everyone


async def test_only_the_projector_and_the_admin_may_write_or_announce(
    acl_redis: AclRedis,
) -> None:
    async with _raw(acl_redis.url("ess-admin")) as admin:
        users = await admin.execute_command("ACL", "USERS")
        assert set(users) == {"default", "ess-projector", "ess-gate", "ess-admin"}
        for command in (("SET", EMERGENCY_STOP_KEY, "{}"), ("PUBLISH", CHANNEL, "k")):
            # DRYRUN answers OK, or the reason it would refuse (as a plain reply).
            allowed = {
                user
                for user in users
                if await admin.execute_command("ACL", "DRYRUN", user, *command) == "OK"
            }
            assert allowed == {"ess-projector", "ess-admin"}, command


async def test_nobody_gets_in_without_a_password(acl_redis: AclRedis) -> None:
    async with RedisPolicyStore(acl_redis.url()) as anonymous:
        with pytest.raises(PolicyStoreError):
            await anonymous.get(EMERGENCY_STOP_KEY)
        with pytest.raises(PolicyStoreError):
            await anonymous.set(EMERGENCY_STOP_KEY, RECORD)
    for user in ("ess-gate", "ess-projector", "default"):
        async with RedisPolicyStore(acl_redis.url(user, "not-the-password")) as wrong:
            with pytest.raises(PolicyStoreError):
                await wrong.get(EMERGENCY_STOP_KEY)
