/* Forms that undo work ask first: a form with data-confirm="question" submits only when
 * the user answers OK to it (cancelling a run throws away the steps since its last
 * checkpoint). */
(function () {
  "use strict";
  document.addEventListener("submit", (event) => {
    const question = event.target.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });
})();
