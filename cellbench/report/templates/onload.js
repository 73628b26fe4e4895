(function () {
  // The report's only script. Records page errors (script errors, blocked resources, CSP
  // violations) into #cb-errors and sets the body's data-ok attribute after the load event, so a headless
  // browser's --dump-dom shows whether the page loaded cleanly.
  var queue = [];
  function put(msg) {
    var box = document.getElementById('cb-errors');
    if (!box) { queue.push(msg); return; }
    box.textContent += msg + '\n';
    box.setAttribute('data-count', String(parseInt(box.getAttribute('data-count') || '0', 10) + 1));
  }
  window.addEventListener('error', function (e) {
    var t = e.target;
    var url = t && t !== window && (t.src || t.href);
    put(url ? 'resource: ' + url : 'error: ' + (e.message || 'unknown'));
  }, true);
  document.addEventListener('securitypolicyviolation', function (e) {
    put('csp: ' + e.violatedDirective + ' ' + e.blockedURI);
  });
  window.addEventListener('load', function () {
    var pending = queue;
    queue = [];
    pending.forEach(put);
    document.body.dataset.ok = '1';
  });
})();
