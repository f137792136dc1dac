/* DepView client-side helpers: the group highlight, fit, zoom to elements, double-click to
 * collapse/expand, following a prepared download's link.
 *
 * dash-cytoscape keeps its Cytoscape.js instance in window.cy (one graph per page). Work that
 * needs the instance runs here so the server never has to know the viewport size.
 */
(function () {
  // the classes and edge data field of a highlight (viewer/app/styles.py, *_CLASS, TENSOR_LABEL)
  var FADED = 'dv-faded', MEMBER = 'dv-member', PATH = 'dv-path', TENSOR = 'dv-tensor',
    SELECTED = 'dv-selected', LABEL = 'hl';
  var SHOWN = 'selection-shown';  // viewer/app/ids.py SHOWN
  var DESELECT = 'deselect';  // viewer/app/ids.py DESELECT
  var DOWNLOAD = 'dv-download';  // viewer/app/callbacks/export.py AUTO_LINK
  var FIT_HINT = 'fit-hint';  // viewer/app/ids.py FIT_HINT
  var READABLE_ZOOM = 0.3;  // below it a node's label is a few pixels high

  // A file larger than this never reaches the server: the browser reads an upload into one
  // base64 string (a 300 MB zip crashed the tab; 200 MB arrived in ~20 s), and dcc.Upload
  // drops a file above its max_size without a word. Say so instead (viewer/app/callbacks/
  // common.py MAX_UPLOAD; the ids are viewer/app/ids.py UPLOAD, BATCH_UPLOAD and MESSAGE).
  var MAX_UPLOAD = 200000000, MESSAGE = 'message', BIG_UPLOAD = 20000000;
  var TOO_LARGE = {
    'upload': 'unzip it and start the app with --model DIR (the server reads it from disk)',
    'batch-upload': 'use a smaller batch'
  };
  function checkSizes(target, files) {
    var box = target && target.closest ? target.closest('#upload, #batch-upload') : null;
    if (!box || !files) { return; }
    for (var i = 0; i < files.length; i++) {
      if (box.id === 'upload' && files[i].size > BIG_UPLOAD && files[i].size <= MAX_UPLOAD) {
        // seconds pass before the server sees it (150 MB: ~18 s here): say what happens
        // (the model callback's own status replaces it once the file arrives)
        window.dash_clientside.set_props('busy', {children: 'Sending ' + files[i].name +
          ' (' + Math.round(files[i].size / 1e6) + ' MB) to the server…'});
      }
      if (files[i].size > MAX_UPLOAD) {
        var mb = function (n) { return Math.round(n / 1e6) + ' MB'; };
        window.dash_clientside.set_props(MESSAGE, {children: {
          type: 'Div', namespace: 'dash_html_components',
          props: {className: 'msg msg-error', role: 'status',
                  children: files[i].name + ': ' + mb(files[i].size) + ' is too large to ' +
                            'send through the browser (at most ' + mb(MAX_UPLOAD) + '): ' +
                            TOO_LARGE[box.id]}}});
        return;
      }
    }
  }
  document.addEventListener('change', function (e) {
    checkSizes(e.target, e.target && e.target.files);
  }, true);
  document.addEventListener('drop', function (e) {
    checkSizes(e.target, e.dataTransfer && e.dataTransfer.files);
  }, true);

  // A callback request the server never answered (it stopped, or the network dropped):
  // Dash says so only in the console and leaves the buttons it disabled for the call
  // disabled, so the page looks busy for good. Say so in the message bar and free them
  // (their ids: viewer/app/ids.py PREVIEW, APPLY, SENSITIVITY, MODEL_PICKER, UPLOAD,
  // TIME_FORWARD, BUSY; tests/test_app_main.py checks that these name every output a
  // callback's `running=` sets; a button disabled for another reason is disabled again by
  // the server's next answer).
  var UNREACHABLE = 'The server did not answer (is it still running?): once it is back, ' +
    'reload the page.';
  var RUNNING = ['preview', 'apply', 'sensitivity', 'model-picker', 'upload'];
  function unreachable() {
    var set = window.dash_clientside.set_props;
    set(MESSAGE, {children: {type: 'Div', namespace: 'dash_html_components',
                             props: {className: 'msg msg-error', role: 'status',
                                     children: UNREACHABLE}}});
    RUNNING.forEach(function (id) {
      if (document.getElementById(id)) { set(id, {disabled: false}); }
    });
    set('busy', {children: ''});
    var timing = document.getElementById('time-forward');
    if (timing && timing.textContent === 'Timing…') {  // (its running text)
      set('time-forward', {disabled: false, children: 'Time forward'});
    }
  }
  var nativeFetch = window.fetch;
  window.fetch = function (resource) {
    var url = typeof resource === 'string' ? resource : (resource && resource.url) || '';
    var sent = nativeFetch.apply(this, arguments);
    if (url.indexOf('_dash-update-component') < 0) { return sent; }
    return sent.catch(function (err) { unreachable(); throw err; });
  };

  // Search hits: Enter in the search box picks the first hit (it is selected, as a click
  // would select it: the keyboard's way to the inspector), then steps to the next one
  // (Shift+Enter: the previous). Hits too far apart to read when fitted together are shown
  // one at a time from the start.
  var SEARCH = 'search';  // viewer/app/ids.py SEARCH
  // {ids, i, query, picked}: the hits, the one on screen alone (-1: none, they are fitted
  // together), and whether Enter has selected it
  var hits = null;
  // Enter pressed before the search's hits came back (typed and pressed at once: the search
  // waits for typing to pause, then for the server): {query, back}, picked when they come
  var pending = null;
  function showHit(pick) {
    var cy = window.cy, hint = document.getElementById(FIT_HINT);
    if (!cy || !hits || !hits.ids.length || hits.i < 0) { return; }
    var n = cy.getElementById(hits.ids[hits.i]);
    cy.stop();
    cy.animate({zoom: Math.max(cy.zoom(), 1.0), center: {eles: n}}, {duration: 300});
    if (pick) { n.emit('tap'); }  // (the server answers a tap: the inspector and group)
    if (hint && hits.ids.length > 1) {  // (one match: nothing to step to)
      hint.textContent = 'Match ' + (hits.i + 1) + ' of ' + hits.ids.length + ': ' +
        (n.data('name') || n.data('path') || '') + ' · Enter: next, Shift+Enter: previous';
      hint.style.display = 'block';
    }
  }
  document.addEventListener('keydown', function (e) {
    if (e.key !== 'Enter' || !e.target || e.target.id !== SEARCH) { return; }
    var query = e.target.value.trim();
    if (!hits || query !== hits.query) {
      // the search was cleared, or holds another query since (one without matches leaves
      // the last one's hits): nothing of it to step through; its hits, if any come, are
      // picked as they arrive
      hits = null;
      pending = query ? {query: query, back: e.shiftKey} : null;
      var hint = document.getElementById(FIT_HINT);
      if (hint) { hint.style.display = 'none'; }
      return;
    }
    pending = null;
    if (!hits.ids.length) { return; }
    var len = hits.ids.length;
    if (hits.i < 0) {
      hits.i = e.shiftKey ? len - 1 : 0;
    } else if (hits.picked) {
      hits.i = (hits.i + (e.shiftKey ? len - 1 : 1)) % len;
    }
    hits.picked = true;
    showHit(true);
  }, true);

  // A click on the graph's background, or Escape outside a text field, clears the selection:
  // the server answers with an empty inspector and no highlight.
  function deselect() {
    var cy = window.cy;
    if (cy) { cy.elements('.' + SELECTED).removeClass(SELECTED); }
    window.dash_clientside.set_props(DESELECT, {data: Date.now()});
  }
  document.addEventListener('keydown', function (e) {
    var t = e.target, tag = t && t.tagName;
    if (e.key !== 'Escape' || tag === 'INPUT' || tag === 'TEXTAREA' || tag === 'SELECT') {
      return;
    }
    deselect();
  });

  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    depview: {
      /* Called whenever the elements change: hook the tap and double-click handlers once. */
      bind: function (elements) {
        var tries = 0;
        function hook() {
          var cy = window.cy;
          if (!cy) {
            if (tries++ < 50) { setTimeout(hook, 100); }
            return;
          }
          if (cy.__depviewBound) { return; }
          cy.__depviewBound = true;
          // the tapped node is marked at once; the server's highlight (its group) follows
          cy.on('tap', 'node', function (evt) {
            cy.batch(function () {
              cy.elements('.' + SELECTED).not(evt.target).removeClass(SELECTED);
              evt.target.addClass(SELECTED);
            });
          });
          cy.on('tap', function (evt) {
            if (evt.target === cy) { deselect(); }
          });
          cy.on('dbltap', 'node', function (evt) {
            var d = evt.target.data();
            window.dash_clientside.set_props('dbltap', {
              data: {kind: d.kind, name: d.kind === 'module' ? d.path : d.name, t: Date.now()}
            });
          });
        }
        hook();
        return window.dash_clientside.no_update;
      },

      /* The graph's stylesheet: the base rules, then the overlays (legend type, preview
       * widths, search hits), later rules winning, then the rules of the highlight classes. */
      compose: function (base, legend, preview, search) {
        var out = (base && base.rules || []).slice();
        [legend, preview, search].forEach(function (part) {
          if (part && part.rules) { out = out.concat(part.rules); }
        });
        return out.concat(base && base.last || []);
      },

      /* Draw the inspected group (viewer/app/styles.py group_highlight): classes on the
       * members, the edges carrying its tensors (labelled through their data) and the selected
       * element, everything else in `fade` dimmed. Only elements whose classes change are
       * restyled; a stylesheet swap would restyle and redraw all of them. Once that frame is
       * drawn, `selection` goes to the SHOWN store, which the panels follow: rendering them
       * then never holds up the highlight. */
      highlight: function (hl, selection) {
        var cy = window.cy, tries = 0;
        requestAnimationFrame(function () {  // runs before the next frame; the timeout, after
          setTimeout(function () {
            window.dash_clientside.set_props(SHOWN, {data: selection});
          }, 0);
        });
        if (!cy || !hl) { return window.dash_clientside.no_update; }
        (function apply() {
          var missing = false;
          function pick(ids) {
            var out = cy.collection();
            ids.forEach(function (id) {
              var e = cy.getElementById(id);
              if (e.empty()) { missing = true; } else { out.merge(e); }
            });
            return out;
          }
          var want = {};
          want[FADED] = hl.fade ? cy.elements(hl.fade) : cy.collection();
          want[MEMBER] = pick(hl.nodes || []);
          want[PATH] = pick(hl.path || []);
          want[TENSOR] = pick((hl.edges || []).map(function (p) { return p[0]; }));
          want[SELECTED] = pick(hl.selected ? [hl.selected] : []);
          cy.batch(function () {
            (hl.edges || []).forEach(function (p) {
              var e = cy.getElementById(p[0]);
              if (e.nonempty() && e.data(LABEL) !== p[1]) { e.data(LABEL, p[1]); }
            });
            Object.keys(want).forEach(function (cls) {
              var have = cy.elements('.' + cls);
              have.not(want[cls]).removeClass(cls);
              want[cls].not(have).addClass(cls);
            });
          });
          // a new view's elements may not be in Cytoscape yet: try again shortly
          if (missing && tries++ < 20) { setTimeout(apply, 50); }
        })();
        return window.dash_clientside.no_update;
      },

      /* The Fit button. A deep network fitted whole is a thin line of unreadable boxes: then
       * say so, and how to see it whole, until the view next moves. */
      fit: function (n) {
        var cy = window.cy;
        if (!cy) { return window.dash_clientside.no_update; }
        var hint = document.getElementById(FIT_HINT);
        cy.stop();
        cy.animate({fit: {padding: 30}}, {duration: 250, complete: function () {
          var z = cy.zoom();
          if (!hint || z >= READABLE_ZOOM) { return; }
          hint.textContent = 'The whole graph at ' + Math.max(1, Math.round(z * 100)) +
            '% is too small to read: Collapse all draws one box per top-level module; ' +
            'scroll to zoom in.';
          hint.style.display = 'block';
          // hidden when the view next moves from where the fit left it (the animation's own
          // last viewport event leaves it there; a listener added later would miss a move
          // made at once)
          var pan = cy.pan();
          var moved = function () {
            var p = cy.pan();
            if (cy.zoom() === z && p.x === pan.x && p.y === pan.y) { return; }
            hint.style.display = 'none';
            cy.off('viewport', moved);
          };
          cy.on('viewport', moved);
        }});
        return window.dash_clientside.no_update;
      },

      /* Zoom to {ids: [...]} (search hits, the module just collapsed/expanded) or, for
       * {top: true} (a new graph), show its top at a readable zoom: a deep network fitted whole
       * would be a thin line of unreadable boxes. */
      zoomTo: function (target) {
        var cy = window.cy;
        if (!cy || !target) { return window.dash_clientside.no_update; }
        // run fn once Cytoscape holds the new elements (they arrive after this callback)
        function whenReady(fn) {
          var tries = 0;
          (function poll() {
            if (cy.elements().length >= (target.n || 0) || tries++ > 100) { fn(); return; }
            setTimeout(poll, 30);
          })();
        }
        if (target.top) {
          whenReady(function () {
            var bb = cy.elements().boundingBox();
            if (!isFinite(bb.w)) { return; }
            var z = Math.min(1.0, cy.width() / (bb.w + 60));
            if (bb.h * z < cy.height()) {
              cy.fit(undefined, 30);  // the whole graph is readable: show all of it
              if (cy.zoom() > 1.2) { cy.zoom(1.2); cy.center(); }
              return;
            }
            z = Math.max(z, 0.8);
            cy.zoom(z);
            // centre on the nodes of the first screenful (wide layouts put them anywhere)
            var limit = bb.y1 + cy.height() / z;
            var top = cy.nodes().filter(function (n) {
              return n.isChildless() && n.position('y') < limit;
            });
            var tb = top.nonempty() ? top.boundingBox() : bb;
            if (tb.w * z > cy.width()) {  // too wide: start at the model's inputs
              var first = cy.nodes('[op_type = "input"]');
              if (first.empty()) {  // or at the first layer
                first = top.filter(function (n) { return n.position('y') <= tb.y1 + 40; });
              }
              // with the layers that read them: a wide module box can put those far to the
              // side, and an input alone on screen shows nothing of the model (HF PVT)
              var readers = first.outgoers('node').filter(function (n) {
                return n.isChildless();
              });
              var both = first.union(readers);
              if (readers.nonempty() && both.boundingBox().w * z > cy.width() - 40) {
                first = readers.first();  // not both on one screen: the first layer
              } else if (readers.nonempty()) {
                first = both;
              }
              // and what runs next, down the first screen, while it fits beside them: a
              // language model's input and embedding alone showed none of its first layer
              // (the rotary table beside them took the screen)
              var shown = first, frontier = first;
              for (var step = 0; step < 12 && frontier.nonempty(); step++) {
                var next = cy.collection();
                frontier.outgoers('node').forEach(function (n) {
                  if (!n.isChildless() || n.position('y') >= limit || shown.contains(n)) {
                    return;
                  }
                  if (shown.union(n).boundingBox().w * z <= cy.width() - 40) {
                    shown = shown.union(n);
                    next = next.union(n);
                  }
                });
                frontier = next;
              }
              first = shown;
              if (first.nonempty()) { tb = first.boundingBox(); }
            }
            cy.pan({x: cy.width() / 2 - (tb.x1 + tb.w / 2) * z, y: 20 - bb.y1 * z});
          });
          return window.dash_clientside.no_update;
        }
        if (!target.ids || !target.ids.length) { return window.dash_clientside.no_update; }
        // the elements may have just been replaced: wait for Cytoscape to have them
        whenReady(function () {
          var eles = cy.collection();
          target.ids.forEach(function (id) { eles = eles.union(cy.getElementById(id)); });
          if (eles.empty()) { return; }
          cy.stop();
          var bb = eles.boundingBox();
          var z = Math.min(1.6, Math.min(cy.width() / (bb.w + 160), cy.height() / (bb.h + 160)));
          var box = document.getElementById(SEARCH);
          // (a module collapsed or expanded is zoomed to as well: no hits of a search)
          hits = target.search ? {ids: target.ids.filter(function (id) {
            return cy.getElementById(id).nonempty();
          }), i: -1, query: box ? box.value.trim() : '', picked: false} : null;
          var hint = document.getElementById(FIT_HINT);
          if (hint) { hint.style.display = 'none'; }
          if (hits && pending && pending.query === hits.query && hits.ids.length) {
            hits.i = pending.back ? hits.ids.length - 1 : 0;  // (Enter came first: pick now)
            hits.picked = true;
            pending = null;
            showHit(true);
            return;
          }
          pending = null;
          if (z >= READABLE_ZOOM || eles.length === 1 || !hits) {
            cy.animate({zoom: z, center: {eles: eles}}, {duration: 300});
            return;
          }
          // fitted together they would be too small to read (25 LayerNorms down GPT-2): show
          // them one at a time, in graph order; Enter in the search box picks one
          hits.i = 0;
          showHit(false);
        });
        return window.dash_clientside.no_update;
      },

      /* A message that hands over a prepared file holds a one-time link of class DOWNLOAD
       * (viewer/app/callbacks/export.py): follow it at once, so the browser downloads the
       * file as it downloads any link (to disk, with its progress bar). `children` is the
       * message as Dash holds it: components as {type, props: {children, ...}}. */
      download: function (children) {
        var link = (function find(c) {
          if (!c || typeof c !== 'object') { return null; }
          if (Array.isArray(c)) {
            for (var i = 0; i < c.length; i++) {
              var hit = find(c[i]);
              if (hit) { return hit; }
            }
            return null;
          }
          var p = c.props || {};
          return p.className === DOWNLOAD && p.href ? p : find(p.children);
        })(children);
        if (link) {
          var a = document.createElement('a');
          a.href = link.href;
          a.download = link.download || '';
          a.style.display = 'none';
          document.body.appendChild(a);
          a.click();
          a.remove();
          // the link is used now: the one in the message would answer 404, so it stops
          // being one (once React has drawn it)
          var tries = 0;
          (function spend() {
            var shown = document.querySelectorAll('a.' + DOWNLOAD);
            for (var i = 0; i < shown.length; i++) {
              if (shown[i].getAttribute('href') === link.href) {
                shown[i].dataset.spent = link.href;
                shown[i].removeAttribute('href');
                shown[i].classList.add('used');
                shown[i].title = 'downloaded: the link worked once; press Checkpoint again ' +
                  'for another copy';
                return;
              }
            }
            if (tries++ < 20) { setTimeout(spend, 50); }
          })();
        }
        return window.dash_clientside.no_update;
      }
    }
  });
})();
