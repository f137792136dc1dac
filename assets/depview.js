/* DepView client-side helpers: fit, zoom to elements, double-click to collapse/expand.
 *
 * dash-cytoscape keeps its Cytoscape.js instance in window.cy (one graph per page). Work that
 * needs the instance runs here so the server never has to know the viewport size.
 */
window.dash_clientside = Object.assign({}, window.dash_clientside, {
  depview: {
    /* Called whenever the elements change: hook the double-click handler once. */
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
     * widths, search hits, the selected group), later rules winning. */
    compose: function (base, legend, preview, search, group) {
      var out = (base || []).slice();
      [legend, preview, search, group].forEach(function (part) {
        if (part && part.rules) { out = out.concat(part.rules); }
      });
      return out;
    },

    /* The Fit button. */
    fit: function (n) {
      if (window.cy) { window.cy.animate({fit: {padding: 30}}, {duration: 250}); }
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
          if (tb.w * z > cy.width()) {  // too wide: start at the first layer (the inputs)
            var first = top.filter(function (n) { return n.position('y') <= tb.y1 + 40; });
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
        cy.animate({zoom: z, center: {eles: eles}}, {duration: 300});
      });
      return window.dash_clientside.no_update;
    }
  }
});
