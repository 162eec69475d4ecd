// The participant page's part of online experiments (the shared join link, issue 19): the
// lobby's count while a group forms, the release when none could be formed, the completion
// code, and the way back (/p/{code}/done answers 303 to the experiment's completion URL).

const $ = (selector) => document.querySelector(selector);
/** seconds the final screen waits before it goes on to the way back by itself */
export const WAY_BACK_AFTER = 5;

/** The waiting screen's count: `{present, needed}` from `hello.lobby` or a `lobby` frame. */
export function renderLobby(lobby) {
  const el = $("#lobby");
  if (!el) return;
  if (!lobby) {
    el.hidden = true;
    return;
  }
  el.hidden = false;
  el.dataset.present = String(lobby.present);
  el.dataset.needed = String(lobby.needed);
  const missing = Math.max(0, lobby.needed - lobby.present);
  el.textContent = `${lobby.present} of ${lobby.needed} players are here` + (missing ? `; waiting for ${missing} more.` : ".");
}

/** Show the completion code when the participant came through the shared link. */
export function renderCompletionCode(detail) {
  for (const el of document.querySelectorAll(".completion-code")) {
    const code = detail && detail.join_label ? detail.completion_code : null;
    el.hidden = !code;
    const value = el.querySelector("strong");
    if (value) value.textContent = code || "";
  }
}

let leaving = null;

/**
 * The run is over (the last block ended, or released from the lobby): when the experiment has a
 * way back, show "Continue" and go there after a few seconds. `/p/{code}/done` says whether
 * there is one: a redirect (yes), 404 (no), 409 (not over yet: the last scores are being
 * stored; asked again shortly).
 */
export function wayBack(code, screen) {
  if (leaving) return leaving;
  const target = `/p/${encodeURIComponent(code)}/done`;
  leaving = (async () => {
    for (let attempt = 0; attempt < 20; attempt += 1) {
      let response;
      try {
        response = await fetch(target, { redirect: "manual", cache: "no-store" });
      } catch (error) {
        console.warn("synclab: the way back could not be asked", error);
        await new Promise((resolve) => setTimeout(resolve, 500));
        continue;
      }
      if (response.type === "opaqueredirect" || (response.status >= 300 && response.status < 400)) {
        const button = $(`#screen-${screen} .continue`);
        if (button) {
          button.href = target;
          button.hidden = false;
        }
        const note = $(`#screen-${screen} .leaving`);
        let left = WAY_BACK_AFTER;
        const count = () => {
          if (note) {
            note.hidden = false;
            note.textContent = `You will be taken back in ${left} s.`;
          }
          if (left <= 0) window.location.assign(target);
          left -= 1;
        };
        count();
        setInterval(count, 1000);
        return true;
      }
      if (response.status !== 409) return false;
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    return false;
  })();
  return leaving;
}
