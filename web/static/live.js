// One live connection for the pages that update themselves (History, a run): an EventSource that
// the browser resumes with Last-Event-ID after a dropped connection; when the browser gives up
// (an error status), it is opened again after 10 s from the page's own cursor (``url()`` is asked
// again). It closes on pagehide and reopens when the page comes back from the back/forward cache.
//
//   FlagpostLive.open({url: function () {...}, listeners: {event: fn}, setState: fn});
//
// setState receives "connecting", "live", "reconnecting" or "offline".
(function () {
  "use strict";

  var RETRY_AFTER_MS = 10000;

  function open(options) {
    var source = null;
    var retryTimer = null;

    function connect() {
      retryTimer = null;
      options.setState(source ? "reconnecting" : "connecting");
      source = new EventSource(options.url());
      source.addEventListener("open", function () {
        options.setState("live");
      });
      Object.keys(options.listeners).forEach(function (name) {
        source.addEventListener(name, options.listeners[name]);
      });
      source.addEventListener("error", function () {
        if (source.readyState === EventSource.CLOSED) {
          options.setState("offline");
          source.close();
          if (retryTimer === null) {
            retryTimer = window.setTimeout(connect, RETRY_AFTER_MS);
          }
        } else {
          options.setState("reconnecting"); // the browser retries by itself, with Last-Event-ID
        }
      });
    }

    window.addEventListener("pagehide", function () {
      if (source) {
        source.close();
      }
      if (retryTimer !== null) {
        window.clearTimeout(retryTimer);
        retryTimer = null;
      }
    });
    window.addEventListener("pageshow", function (event) {
      if (event.persisted) {
        connect(); // restored from the back/forward cache: resume from our last id
      }
    });

    connect();
  }

  window.FlagpostLive = { open: open };
})();
