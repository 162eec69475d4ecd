"""The shared join link and the way back: ``GET /join/{experiment}`` and ``GET /p/{code}/done``.

An experiment created with ``online`` (see :mod:`server.online`) has one link for everybody:
``/join/{experiment}?label=…`` (or the experiment's ``label_param``, such as ``PROLIFIC_PID``).
Each new label takes the next free seat (:func:`server.storage.seat_arrival`, safe across
processes) and is sent (303) to its participant page; the same label again gets the same seat.
An experiment that is full, or over, answers with a page that says so and seats nobody.

At the end of a participant's run (their last block's period ended, or released from the
lobby) the page sends them to ``/p/{code}/done``, which answers 303 to their way back
(:func:`way_back`): the experiment's ``completion_url`` with ``{label}``, ``{code}``,
``{completion_code}``, ``{status}`` and ``{score}`` filled in, URL-encoded.
"""

from __future__ import annotations

import html
import math
import time
import unicodedata
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .deliveries import otree_way_back
from .online import settings
from .runtime import Runtime
from .storage import (
    departure,
    ensure_completion_codes,
    experiment_row,
    label_seat,
    run_over,
    seat_arrival,
)

#: the longest label stored (``participants.join_label``)
MAX_LABEL = 200
#: experiment statuses after which nobody new is seated
OVER = ("done", "cancelled", "failed")
#: what ``{status}`` is when the run ended with nothing else to say
FINISHED = "finished"


def page(title: str, text: str, status: int) -> HTMLResponse:
    """A small page for a person, not a program: what happened and what to do."""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>synclab: {html.escape(title)}</title><link rel="icon" href="data:,"></head>
<body style="font: 16px/1.4 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem">
<h1>{html.escape(title)}</h1>
<p>{text}</p>
</body></html>
"""
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def _score(score: float) -> str:
    """A score as a URL shows it: at most six decimals, no trailing zeros (``12.5``, ``3``);
    nothing for one that is no finite number (a sum past a float's range), never ``inf``."""
    if not math.isfinite(score):
        return ""
    text = f"{round(score, 6):.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def way_back(experiment: dict[str, Any], participant: dict[str, Any], score: float) -> str | None:
    """Where participant ``participant`` of ``experiment`` goes at the end, or ``None``: nowhere.

    ``completion_url`` formatted with the participant's values, each URL-encoded; ``{status}``
    is the participant's stored status (``no_group``, ``dropped``, …), else ``finished``. Without
    one, an experiment with ``otree_url`` sends the participant back to oTree
    (:func:`server.deliveries.otree_way_back`).
    """
    online = settings(experiment.get("online"))
    if online is None:
        return None
    if online.completion_url is None:  # from oTree: back to the participant's oTree page, or nowhere
        return otree_way_back(online, participant.get("join_label"))
    values = {
        "label": participant.get("join_label") or "",
        "code": participant["code"],
        "completion_code": participant.get("completion_code") or "",
        "status": participant.get("status") or FINISHED,
        "score": _score(score),
    }
    return online.completion_url.format_map({k: quote(str(v), safe="") for k, v in values.items()})


async def join(request: Request) -> Response:
    """``GET /join/{experiment}``: seat the label and send it to its participant page."""
    rt: Runtime = request.app.state.runtime
    code = str(request.path_params["experiment"])
    row = await rt.database.read(experiment_row, code)
    online = None if row is None else settings(row["online"])
    if row is None:
        return page(
            "This link is not known",
            "There is no experiment to join at this address. Check the link you were given.",
            404,
        )
    if online is None:  # a lab experiment: each participant has a link of their own (/p/…)
        return page(
            "This experiment is not open for online joining",
            "This experiment takes no arrivals through this address: each of its participants has a "
            "link of their own. Check the link you were given, or ask the experimenter.",
            404,
        )
    label = request.query_params.get(online.label_param, "").strip()
    if not label or len(label) > MAX_LABEL or not _printable(label):
        return page(
            "This link is incomplete",
            f"The link must carry your id as <code>?{html.escape(online.label_param)}=…</code> "
            f"(at most {MAX_LABEL} characters, none of them a control character). Go back to where you came "
            "from and follow the link from there.",
            400,
        )
    if row["status"] in OVER:
        known = await rt.database.read(label_seat, row["id"], label)
        if known is not None:
            return RedirectResponse(f"/p/{known}", status_code=303)
        return page("This experiment is over", "It no longer takes participants. Thank you for your interest.", 410)
    arrival = await rt.database.write(seat_arrival, row["id"], label, time.time())
    if arrival is None:
        return page(
            "This experiment is full",
            "Every place has been taken. Thank you for your interest; please return to where you came from.",
            409,
        )
    return RedirectResponse(f"/p/{arrival.code}", status_code=303)


def _printable(label: str) -> bool:
    """No control or format character (NUL, a newline, a right-to-left override): no platform's id
    has one, PostgreSQL refuses a NUL in text, and the others would garble a list or a log."""
    return not any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in label)


async def done(request: Request) -> Response:
    """``GET /p/{code}/done``: 303 to the participant's way back, once their run is over."""
    rt: Runtime = request.app.state.runtime
    code = str(request.path_params["code"])
    found = await rt.database.read(departure, code)
    if found is None:
        return page("This link is not known", "Check the address you were given.", 404)
    if found.participant["completion_code"] is None:  # a participant of an older version
        await rt.database.write(ensure_completion_codes, found.experiment["id"])
        found = await rt.database.read(departure, code)
        assert found is not None
    url = way_back(found.experiment, found.participant, found.score)
    if url is None:
        return page("Thank you", "The experiment is over for you. You may close this page.", 404)
    if not run_over(found.participant["status"], found.finished):  # a bot may play a dropout's seat on
        back = html.escape(f"/p/{code}")
        return page("Not over yet", f'Your part is not over yet: <a href="{back}">go back to the experiment</a>.', 409)
    return RedirectResponse(url, status_code=303)


routes = [
    Route("/join/{experiment}", join),
    Route("/p/{code}/done", done),
]
