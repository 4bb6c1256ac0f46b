// fsmtrain ui: keep a live page up to date without reloading it.
// Same origin only (the page's Content-Security-Policy allows scripts from this server, nothing inline).
// The page names what to poll in <body data-live="/api/live/..." data-since="N">; each answer says what
// changed: fragments to replace or prepend (HTML built by the server's escaping builder), or to reload.
// With scripts off, the page's <noscript> refresh does the same job, less smoothly.
(function () {
  "use strict";
  var body = document.body;
  var src = body && body.getAttribute("data-live");
  if (!src) { return; }
  var every = 2000;
  var state = document.createElement("p");
  state.id = "live-state";
  state.setAttribute("role", "status");
  state.textContent = "live: following the log";
  body.insertBefore(state, body.firstChild ? body.firstChild.nextSibling : null);

  function trim(el) {
    var max = parseInt(el.getAttribute("data-max") || "0", 10);
    while (max > 0 && el.children.length > max) { el.removeChild(el.lastElementChild); }
  }

  // Boxes a person ticked (runs to compare) stay ticked when the part holding them is replaced.
  function ticked() {
    var keep = {};
    var boxes = document.querySelectorAll("input[type=checkbox]:checked");
    for (var i = 0; i < boxes.length; i++) { keep[boxes[i].name + "=" + boxes[i].value] = true; }
    return keep;
  }

  function retick(keep) {
    var boxes = document.querySelectorAll("input[type=checkbox]");
    for (var i = 0; i < boxes.length; i++) {
      if (keep[boxes[i].name + "=" + boxes[i].value]) { boxes[i].checked = true; }
    }
  }

  function apply(data) {
    var id, el;
    if (data.reload) { window.location.reload(); return false; }
    var keep = ticked();
    var replace = data.replace || {};
    for (id in replace) {
      if (Object.prototype.hasOwnProperty.call(replace, id)) {
        el = document.getElementById(id);
        if (el) { el.outerHTML = replace[id] || "<section id=\"" + id + "\"></section>"; }
      }
    }
    retick(keep);
    var prepend = data.prepend || {};
    for (id in prepend) {
      if (Object.prototype.hasOwnProperty.call(prepend, id)) {
        el = document.getElementById(id);
        if (el) { el.insertAdjacentHTML("afterbegin", prepend[id]); trim(el); }
      }
    }
    if (data.since !== undefined && data.since !== null) { body.setAttribute("data-since", String(data.since)); }
    return data.live !== false;
  }

  function tick() {
    if (document.hidden) { setTimeout(tick, every); return; }
    var url = src + (src.indexOf("?") < 0 ? "?" : "&") + "since=" + encodeURIComponent(body.getAttribute("data-since") || "");
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (data) {
        if (apply(data)) {
          state.textContent = "live: updated " + new Date().toLocaleTimeString();
          setTimeout(tick, every);
        } else {
          state.textContent = "not running any more: live updates stopped";
        }
      })
      .catch(function (e) {
        state.textContent = "live: cannot reach the server (" + e.message + "); trying again";
        setTimeout(tick, every * 3);
      });
  }
  setTimeout(tick, every);
}());
