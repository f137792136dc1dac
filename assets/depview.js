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

    /* The Fit button. */
    fit: function (n) {
      if (window.cy) { window.cy.animate({fit: {padding: 30}}, {duration: 250}); }
      return window.dash_clientside.no_update;
    },

    /* Zoom to {ids: [...]}: search hits, or the module just collapsed/expanded. */
    zoomTo: function (target) {
      var cy = window.cy;
      if (!cy || !target || !target.ids || !target.ids.length) {
        return window.dash_clientside.no_update;
      }
      // the elements may have just been replaced: wait a frame for Cytoscape to have them
      setTimeout(function () {
        var eles = cy.collection();
        target.ids.forEach(function (id) { eles = eles.union(cy.getElementById(id)); });
        if (eles.empty()) { return; }
        cy.stop();
        var bb = eles.boundingBox();
        var z = Math.min(1.6, Math.min(cy.width() / (bb.w + 160), cy.height() / (bb.h + 160)));
        cy.animate({zoom: z, center: {eles: eles}}, {duration: 300});
      }, 60);
      return window.dash_clientside.no_update;
    }
  }
});
