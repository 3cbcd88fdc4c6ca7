"""The From check's two readers agree: the regular expression for the plain
forms and the stdlib's address parser for the rest."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from smtpgateway.storage.messages import _PLAIN_MAILBOX, _is_inbox, _names_only, _parsed_names_only

INBOX = "agent.smith@agentmail.dev"

# Pieces a From header is made of, the awkward ones included: dots in display
# names, quotes, quoted pairs, comments, groups, encoded words, non-ASCII.
PIECES = st.sampled_from(
    [
        "agent.smith",
        "Agent",
        "Smith",
        "AgentMail.DEV",
        "agentmail.dev",
        "other",
        "@",
        ".",
        "..",
        " ",
        "\t",
        "<",
        ">",
        '"',
        '\\"',
        "\\",
        ",",
        ":",
        ";",
        "(",
        ")",
        "[",
        "]",
        "=?utf-8?q?x?=",
        "é",
        "-",
        "'",
        "!",
        "\r\n ",
    ]
)


def fast_reading(value: str) -> bool | None:
    match = _PLAIN_MAILBOX.fullmatch(value) if "=?" not in value else None
    if match is None:
        return None
    return _is_inbox(match["local"] or match["angle_local"], match["domain"] or match["angle_domain"], INBOX)


WORDS = st.lists(PIECES, max_size=5).map("".join)
# Mostly shaped like a mailbox, so that the expression matches often.
SHAPED = st.builds(
    lambda display, local, domain, angle: f"{display}<{local}@{domain}>" if angle else f"{display}{local}@{domain}",
    WORDS,
    st.sampled_from(["agent.smith", "Agent.Smith", "agent..smith", "agent", '"agent.smith"', "a!b"]) | WORDS,
    st.sampled_from(["agentmail.dev", "AGENTMAIL.dev", "agentmail-.dev", "[127.0.0.1]", "agentmail.dev."]) | WORDS,
    st.booleans(),
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(PIECES, max_size=12).map("".join) | SHAPED)
@example("agent.smith@agentmail.dev")
@example("Agent Smith <agent.smith@AgentMail.DEV>")
@example('"Smith, Agent" <agent.smith@agentmail.dev>')
@example("<agent.smith@agentmail.dev>")
@example("Agent.Smith <agent.smith@agentmail.dev>")
@example("agent.smith@agentmail.dev ")
def test_the_expression_agrees_with_the_parser_wherever_it_matches(value: str) -> None:
    fast = fast_reading(value)
    if fast is not None:
        assert fast == _parsed_names_only(value, INBOX), value


def test_the_usual_forms_take_the_fast_reading() -> None:
    for value in (INBOX, f"Agent Smith <{INBOX}>", f'"Smith, Agent" <{INBOX}>', f"<{INBOX}>"):
        assert fast_reading(value) is True
        assert _names_only(value, INBOX)
    assert fast_reading("someone@example.com") is False
    assert fast_reading(f"Agent. Smith <{INBOX}>") is None  # the parser decides: a defect
    assert not _names_only(f"{INBOX}, other@example.com", INBOX)
