"""What the proxy remembers of a conversation between its requests, on the shared store: read
before routing (which model it is on, what that model cached, who signed its thinking) and
written once the answer is known. A store that fails costs money, never a request."""

from __future__ import annotations

import dataclasses
import logging
import time

from router.parse import Parsed
from router.routing.conversations import (
    SIGNATURES_LOOKED_UP,
    Conversation,
    all_signatures,
    caller_of,
    conversation_id,
    decode_state,
    encode_state,
    history_of,
    signature_hash,
    signature_key,
    state_after,
    state_key,
)
from router.state import Store
from router.upstream.relay import Outcome


async def load_conversation(store: Store, parsed: Parsed) -> Conversation | None:
    """Read the state of the conversation a request continues: one store round trip, and a
    second only for a history whose thinking more than one model may have signed."""
    messages = parsed.request.messages
    caller = caller_of(parsed.headers)
    cid = conversation_id(caller, parsed.headers, messages)
    if cid is None:
        return None
    history = history_of(messages)
    values = await _read(store, [state_key(cid),
                                 *(signature_key(caller, h) for h in history.latest)])
    state = decode_state(values[0])
    owners = {h: v.decode() for h, v in zip(history.latest, values[1:], strict=True) if v}
    signers = set(state.signers) if state else set()
    if history.latest and (len(signers) != 1 or signers != set(owners.values())):
        # The history may carry thinking of several models: every signature must be known to
        # strip the right ones when the conversation moves (or stays).
        every = all_signatures(messages)[-SIGNATURES_LOOKED_UP:]
        unknown = [h for h in every if h not in owners]
        found = await _read(store, [signature_key(caller, h) for h in unknown])
        owners.update({h: v.decode() for h, v in zip(unknown, found, strict=True) if v})
        history = dataclasses.replace(history, signatures=every)
    # Only a first turn asks whether the client caches (a scan of the whole body).
    caching = state is None and b'"cache_control"' in parsed.body
    return Conversation(cid, caller, history, state, owners, time.time(), caching=caching)


async def _read(store: Store, keys: list[str]) -> list[bytes | None]:
    if not keys:
        return []
    try:
        return await store.get_many(keys)
    except Exception:
        # State is an optimisation of cost, never a reason to fail a request.
        logging.getLogger("router.pipeline").exception({"event": "state_read_failed"})
        return [None] * len(keys)


async def save_conversation(store: Store, conversation: Conversation, outcome: Outcome,
                            ttl_seconds: float, estimate: int = 0) -> None:
    """Remember which model answered, what it cached and which thinking it signed."""
    model = outcome.model
    if model is None or outcome.status != 200:
        return
    usage = outcome.usage
    split = usage.cache_creation
    state = state_after(
        conversation.state, model, now=time.time(),
        cache_read=usage.cache_read_input_tokens or 0,
        cache_written=usage.cache_creation_input_tokens or 0,
        written_1h=bool(split and split.ephemeral_1h_input_tokens),
        output_tokens=usage.output_tokens or 0,
        signed=bool(outcome.signatures),
        estimate=estimate,
        uncached=usage.input_tokens or 0,
    )
    items = {state_key(conversation.id): encode_state(state)}
    owner = model.encode()
    for signature in outcome.signatures:
        items[signature_key(conversation.caller, signature_hash(signature))] = owner
    try:
        await store.set_many(items, ttl_seconds)
    except Exception:
        logging.getLogger("router.pipeline").exception({"event": "state_write_failed"})
