"""GatewaySMTP is written against one aiosmtpd release: it sets what that
release's ``SMTP.__init__`` sets (without calling it), replaces some of its
methods (private ones among them) and calls others. This fails loudly when
aiosmtpd changes under it, instead of a session misbehaving later."""

from __future__ import annotations

import asyncio
import inspect
import warnings
from typing import Any

import aiosmtpd
from aiosmtpd.smtp import SMTP

from smtpgateway.config import GatewayConfig
from smtpgateway.metrics import OFF
from smtpgateway.session.handler import GatewayHandler
from smtpgateway.session.protocol import AIOSMTPD_INIT_ATTRIBUTES, AIOSMTPD_VERSION, GatewaySMTP

# aiosmtpd methods and attributes GatewaySMTP uses without replacing them.
USED_AS_THEY_ARE = (
    "_set_rset_state",
    "_set_post_data_state",
    "_call_handler_hook",
    "check_helo_needed",
    "smtp_STARTTLS",
    "smtp_VRFY",
    "smtp_MAIL",
    "smtp_RCPT",
    "smtp_RSET",
    "smtp_NOOP",
    "smtp_QUIT",
    "smtp_HELP",
    "command_size_limit",
    "line_length_limit",
    "local_part_limit",
)


def attributes_set_by_init() -> tuple[set[str], set[str]]:
    """(aiosmtpd's SMTP.__init__ beyond StreamReaderProtocol's, GatewaySMTP.__init__'s)."""

    async def build() -> tuple[set[str], set[str]]:
        loop = asyncio.get_running_loop()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # aiosmtpd warns about auth_require_tls=False
            theirs = set(vars(SMTP(object(), loop=loop)))
        # As aiosmtpd makes it: with a client_connected_cb (which GatewaySMTP does not pass).
        stream_protocol = set(vars(asyncio.StreamReaderProtocol(asyncio.StreamReader(), lambda r, w: None, loop=loop)))
        config = GatewayConfig.from_settings()
        ours = set(vars(GatewaySMTP(GatewayHandler(config, db=object(), metrics=OFF), loop)))  # type: ignore[arg-type]
        return theirs - stream_protocol, ours

    return asyncio.run(build())


def test_the_aiosmtpd_release_is_the_one_written_against() -> None:
    assert aiosmtpd.__version__ == AIOSMTPD_VERSION, (
        f"aiosmtpd {aiosmtpd.__version__} is installed; GatewaySMTP is written against {AIOSMTPD_VERSION}: "
        "check what its SMTP.__init__ sets and the methods GatewaySMTP replaces, then update AIOSMTPD_VERSION"
    )


def test_init_sets_what_aiosmtpd_sets() -> None:
    theirs, ours = attributes_set_by_init()
    assert theirs == set(AIOSMTPD_INIT_ATTRIBUTES), (
        f"aiosmtpd's SMTP.__init__ changed: {sorted(theirs ^ AIOSMTPD_INIT_ATTRIBUTES)}"
    )
    assert not AIOSMTPD_INIT_ATTRIBUTES - ours, (
        f"GatewaySMTP.__init__ does not set {sorted(AIOSMTPD_INIT_ATTRIBUTES - ours)}"
    )


def own_functions(cls: type) -> dict[str, Any]:
    return {name: value for name, value in vars(cls).items() if inspect.isfunction(value)}


def test_every_replaced_method_is_marked_and_exists_in_aiosmtpd() -> None:
    replaced = {name for name in own_functions(GatewaySMTP) if name != "__init__" and hasattr(SMTP, name)}
    marked = {name for name, function in own_functions(GatewaySMTP).items() if getattr(function, "__override__", False)}
    assert replaced == marked, (
        f"unmarked overrides: {sorted(replaced - marked)}; marked but not in aiosmtpd: {sorted(marked - replaced)}"
    )
    assert len(marked) >= 17


def test_what_is_used_as_it_is_still_exists() -> None:
    missing = [name for name in USED_AS_THEY_ARE if not hasattr(SMTP, name)]
    assert not missing, f"aiosmtpd no longer has {missing}"
