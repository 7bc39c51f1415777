// Confirmations: a form marked data-confirm="question" is sent only once the question was
// answered OK (destructive or fleet-affecting buttons: run, cancel, revert, remove).
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement)) { return; }
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  }, true);
})();
