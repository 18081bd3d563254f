"""Who gets an offer: control-group hashing, expected gain and "send nothing".

Every caller (the engine's batch path, the one-customer path, batch scoring offline) asks these
functions, so a customer is held out of the same campaigns everywhere and an offer is made only
when the same gain is positive.

* **Control groups.** ``holdout_draw(customer, campaign, salt)`` maps the triple to a number in
  [0, 1) with BLAKE2b (keyed hashing from the standard library: stable across processes, Python
  versions and machines, unlike ``hash()``). A customer is held out of a campaign when the draw
  is below the campaign's ``holdout_share``, and out of everything when the draw for the
  campaign id ``"*"`` is below the pool's global share. The salt lives in the pool file, so the
  assignment survives restarts, workers and bundle reloads; changing it reshuffles the groups.
* **Expected gain.** With an uplift model: (probability with the offer - probability without it)
  x value - cost. Without one: probability x value - cost. Only a positive gain is an offer.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from typing import Any

#: the campaign id under which the pool-wide holdout is drawn
GLOBAL_HOLDOUT = "*"
#: ranking names reported in every answer
UPLIFT = "uplift"
RESPONSE = "response"
#: why an answer with no campaign is empty
NO_POSITIVE_GAIN = "no campaign has a positive expected gain"
NO_ELIGIBLE = "no campaign is eligible"
ALL_HELD_OUT = "the customer is in the control group of every campaign with a positive gain"
IN_GLOBAL_HOLDOUT = "the customer is in the global control group"
NO_OFFER_REQUESTED = "top_k is 0"
#: said in an answer to a request without a customer id when the pool has control groups
NO_ID_NOTE = "no customer_id: control groups do not apply"

_SCALE = float(1 << 64)


def holdout_draw(customer_id: str, campaign_id: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by (customer, campaign, salt)."""
    digest = hashlib.blake2b(
        f"{customer_id}\x1f{campaign_id}".encode(), digest_size=8, key=salt.encode()[:64]
    ).digest()
    return int.from_bytes(digest, "big") / _SCALE


@functools.lru_cache(maxsize=64)
def _keyed(salt: str) -> Any:
    """BLAKE2b keyed with ``salt``, nothing hashed yet: copied, never updated itself (keying
    costs a compression; a copy of the keyed state does not)."""
    return hashlib.blake2b(digest_size=8, key=salt.encode()[:64])


class CustomerDraws:
    """:func:`holdout_draw` for one customer and many campaigns, the same numbers to the bit:
    the keyed state and the customer's bytes are hashed once, each campaign continues a copy
    (BLAKE2b hashes a stream, so the digest of ``customer + 0x1f + campaign`` is the same)."""

    __slots__ = ("_state",)

    def __init__(self, customer_id: str, salt: str) -> None:
        self._state = _keyed(salt).copy()
        self._state.update(f"{customer_id}\x1f".encode())

    def draw(self, campaign_id: str) -> float:
        """The customer's draw for ``campaign_id`` (= holdout_draw(customer, campaign, salt))."""
        h = self._state.copy()
        h.update(campaign_id.encode())
        return int.from_bytes(h.digest(), "big") / _SCALE


def held_out(customer_id: str | None, campaign_id: str, share: float, salt: str) -> bool:
    """True when the customer is in the campaign's control group (never without an id)."""
    if customer_id is None or share <= 0.0:
        return False
    return holdout_draw(customer_id, campaign_id, salt) < share


def gain_rule(ranking: str, *, weighted: bool = False) -> str:
    """The rule every offer passed, as an answer item's ``rules`` states it (``weighted``: the
    value is scaled by the customer's CLV weight, ``[clv] weight_gains``)."""
    value = "value x the customer's CLV weight" if weighted else "value"
    if ranking == UPLIFT:
        return f"expected gain > 0: (probability with - without the offer) x {value} - cost"
    return f"expected gain > 0: probability x {value} - cost"


def control_group_rule(share: float, global_share: float) -> str | None:
    """The control-group rule an offer to a customer with an id passed (None: no groups)."""
    parts = []
    if share > 0.0:
        parts.append(f"outside its control group ({share * 100:g}% held out)")
    if global_share > 0.0:
        parts.append(f"outside the global control group ({global_share * 100:g}% held out)")
    return "; ".join(parts) or None


def expected_gain(p_treated: float, p_control: float | None, value: float, cost: float) -> float:
    """(p_treated - p_control) x value - cost; p_control None means "rank by response"."""
    lift = p_treated if p_control is None else p_treated - p_control
    return lift * value - cost


def is_offer(gain: float) -> bool:
    """An offer is made only when it is expected to earn more than it costs."""
    return gain > 0.0 and not math.isnan(gain)


def choose(
    customer_id: Any,
    ranked: Sequence[int],
    n_eligible: int,
    campaign_ids: Sequence[str],
    holdout_shares: Sequence[float],
    salt: str,
    global_share: float,
    top_k: int | None,
) -> tuple[list[int], list[int], str | None]:
    """Offers, control-group hold-outs and the reason for an empty answer, for one customer.

    ``ranked`` holds the campaigns with a positive gain, best first. A campaign whose control
    group holds the customer is skipped (and reported), the next one takes its place; a
    customer in the global control group gets nothing. Without a customer id nobody is held out.
    """
    limit = len(ranked) if top_k is None else top_k
    offers: list[int] = []
    held: list[int] = []
    if customer_id is None:
        offers = list(ranked[:limit]) if limit > 0 else []
    else:
        draws = CustomerDraws(str(customer_id), salt)
        if global_share > 0.0 and draws.draw(GLOBAL_HOLDOUT) < global_share:
            return [], list(ranked[:limit]), IN_GLOBAL_HOLDOUT
        for j in ranked:
            if len(offers) >= limit:
                break
            share = holdout_shares[j]
            if share > 0.0 and draws.draw(campaign_ids[j]) < share:
                held.append(j)
                continue
            offers.append(j)
    reason = None
    if not offers:
        if n_eligible == 0:
            reason = NO_ELIGIBLE
        elif not ranked:
            reason = NO_POSITIVE_GAIN
        elif held:
            reason = ALL_HELD_OUT
        else:
            reason = NO_OFFER_REQUESTED
    return offers, held, reason
