"""Which deployment of an entry with `targets` a request goes to first, and the order of the rest.

    least_busy   the target with the fewest requests in flight from this worker (counted by
                 `admission.Admission.in_flight`, per upstream); ties go to the higher weight,
                 and the targets still tied take turns (a counter per entry)
    weighted     smooth weighted round robin (nginx's): over any run of requests each target
                 gets its weight's share, spread out rather than in bursts

Per worker: each Granian worker balances its own requests (the split holds per worker, hence
overall). Targets this worker knows to be cooling down go to the end of the order; the exchange
asks about each target again before it is tried (admission.py). Pure and synchronous: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.routing.resolver import Target, TargetGroup


def order(group: TargetGroup, in_flight: Mapping[str, int], cooling: Callable[[str], bool]) -> list[Target]:
    """The group's targets in the order to try them; the first is this request's choice."""
    targets = group.targets
    if group.balance == "weighted":
        ranked = _weighted(group)
    else:
        ranked = _least_busy(group, in_flight)
    chosen = [targets[i] for i in ranked]
    usable = [target for target in chosen if not cooling(target.upstream_name)]
    if len(usable) == len(chosen) or not usable:
        return chosen
    return usable + [target for target in chosen if cooling(target.upstream_name)]


def _least_busy(group: TargetGroup, in_flight: Mapping[str, int]) -> list[int]:
    """By requests in flight, then weight (higher first), then file order; the targets tied for
    first place rotated one step per request, so that equal targets take turns."""
    targets = group.targets
    keys = [(in_flight.get(target.upstream_name, 0), -target.weight) for target in targets]
    ranked = sorted(range(len(targets)), key=lambda i: (keys[i], i))
    tied = 1
    while tied < len(ranked) and keys[ranked[tied]] == keys[ranked[0]]:
        tied += 1
    if tied > 1:
        shift = group.turn % tied
        group.turn += 1
        ranked[:tied] = ranked[shift:tied] + ranked[:shift]
    return ranked


def _weighted(group: TargetGroup) -> list[int]:
    """One step of smooth weighted round robin: the chosen index first, then the others by their
    current weight (the next steps' likely choices)."""
    targets = group.targets
    current = group.current
    total = 0
    for index, target in enumerate(targets):
        current[index] += target.weight
        total += target.weight
    best = max(range(len(targets)), key=lambda i: (current[i], -i))
    current[best] -= total
    rest = sorted((i for i in range(len(targets)) if i != best), key=lambda i: (-current[i], i))
    return [best, *rest]


def rest(chosen: Target) -> list[Target]:
    """The other targets of the chosen one's group, in the order to fall over to them (no state
    changes: the choice was made)."""
    group = chosen.group
    assert group is not None
    others = [(index, target) for index, target in enumerate(group.targets) if target is not chosen]
    if group.balance == "weighted":
        current = group.current
        others.sort(key=lambda item: (-current[item[0]], item[0]))
    else:
        others.sort(key=lambda item: -item[1].weight)
    return [target for _, target in others]
