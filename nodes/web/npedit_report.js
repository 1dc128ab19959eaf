// NP-Edit nodes' reports on the node itself. The scorer, Select Best, the DMD critic and Refine return their report
// as ComfyUI "text" UI output (ui.PreviewText); ComfyUI's front end draws that only for its own preview nodes, so
// this shows it in a read-only text box that is neither saved in the workflow nor sent with the prompt.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const REPORT = "npedit_report";

app.registerExtension({
  name: "npedit.report",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("NPEdit")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (!text?.length) return;
      let widget = this.widgets?.find((w) => w.name === REPORT);
      if (!widget) {
        widget = ComfyWidgets.STRING(this, REPORT, ["STRING", { multiline: true }], app).widget;
        widget.serialize = false; // not in the saved workflow's widgets_values
        widget.options = { ...widget.options, serialize: false }; // not in the queued prompt
        if (widget.inputEl) widget.inputEl.readOnly = true;
      }
      widget.value = text.join("\n");
      this.setDirtyCanvas?.(true, true);
    };
  },
});
