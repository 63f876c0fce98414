package httpapi

import (
	"crypto/sha256"
	"encoding/base64"
	"html/template"
)

// pageScript keeps the status page current without a reload: every few
// seconds it fetches the page again (the browser sends the basic-auth
// credentials it holds for this origin) and swaps in its #live part. When
// a fetch fails it says so, and since when the data on screen is, in
// #stale. It changes nothing on the server: the buttons are plain forms,
// and a browser without JavaScript refreshes the page with the <noscript>
// meta refresh instead. The page's text is set with replaceWith of nodes
// the browser parsed from the server's (escaped) answer, and textContent.
const pageScript = `(function () {
  "use strict";
  var every = 5000, limit = 4000, fresh = Date.now();
  var stale = document.getElementById("stale");
  function clock(ms) { return new Date(ms).toISOString().slice(11, 19) + "Z"; }
  function failed(why) {
    var s = Math.round((Date.now() - fresh) / 1000);
    stale.textContent = "Stale: not updated since " + clock(fresh) + " (" + s + " s ago): " + why + ". Retrying every " + every / 1000 + " s.";
    stale.hidden = false;
  }
  function tick() {
    var ctl = new AbortController(), timer = setTimeout(function () { ctl.abort(); }, limit);
    fetch(location.pathname + location.search, { credentials: "same-origin", cache: "no-store", signal: ctl.signal })
      .then(function (r) {
        if (!r.ok) { throw new Error("the updater answered " + r.status); }
        return r.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var next = doc.getElementById("live"), cur = document.getElementById("live");
        if (!next || !cur) { throw new Error("the answer is not the status page"); }
        cur.replaceWith(document.adoptNode(next));
        document.title = doc.title;
        fresh = Date.now();
        stale.hidden = true;
      })
      .catch(function (e) {
        failed(e.name === "AbortError" ? "the updater did not answer within " + limit / 1000 + " s" :
          e.name === "TypeError" ? "the updater did not answer" : e.message);
      })
      .finally(function () { clearTimeout(timer); setTimeout(tick, every); });
  }
  setTimeout(tick, every);
})();`

// pageScriptSource is the Content-Security-Policy source that lets exactly
// this inline script run, and no other.
func pageScriptSource() string {
	sum := sha256.Sum256([]byte(pageScript))
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

// pageScriptJS is the script as the template inserts it, verbatim: its
// hash must match byte for byte.
const pageScriptJS = template.JS(pageScript)
