/* Counts in words for what the scripts draw: "1 run slot", "2 run slots", the rule of
 * rollyard.text.count on the server (and of Django's pluralize in the templates).
 * Loaded by base.html on every page. */
window.RollyardText = (function () {
  "use strict";

  function count(n, noun, plural) {
    return `${n} ${n === 1 ? noun : plural || `${noun}s`}`;
  }

  return { count };
})();
