// The segment editor's live count: posts the form being edited, shows count and sample.
(function () {
  const panel = document.getElementById("segment-preview");
  const form = panel && panel.closest("form");
  if (!panel || !form) return;
  const count = panel.querySelector("[data-role=count]");
  const error = panel.querySelector("[data-role=error]");
  const sample = panel.querySelector("[data-role=sample]");
  let timer = null;
  let sequence = 0;

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  async function refresh() {
    const mine = ++sequence;
    const response = await fetch(panel.dataset.url, { method: "POST", body: new FormData(form), credentials: "same-origin" });
    const data = await response.json();
    if (mine !== sequence) return;  // a newer edit is on its way
    if (data.error) {
      error.textContent = data.error.message;
      error.hidden = false;
      count.textContent = "–";
      sample.replaceChildren();
      return;
    }
    error.hidden = true;
    count.textContent = data.count.toLocaleString(document.documentElement.lang || undefined);
    sample.replaceChildren(...data.sample.map((c) => {
      const tr = document.createElement("tr");
      tr.append(cell(c.ref), cell(c.name), cell(c.email));
      return tr;
    }));
  }

  function later() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 300);
  }

  form.addEventListener("input", later);
  form.addEventListener("change", later);
  document.addEventListener("formset:added", later);
  document.addEventListener("formset:removed", later);
  refresh();
})();
