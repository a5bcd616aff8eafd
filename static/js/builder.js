// The campaign builder: fields that belong to one choice (a multiplier's window, a recurring
// schedule's weekdays) are shown only while that choice is selected. Without this script
// every field shows and the server still checks them.
(function () {
  const form = document.getElementById("builder-form");
  if (!form) return;
  const rows = Array.from(form.querySelectorAll("[data-show-for]"));
  if (!rows.length) return;

  function chosen(name) {
    const checked = form.querySelector(`[name="${name}"]:checked`);
    if (checked) return checked.value;
    const select = form.querySelector(`select[name="${name}"]`);
    return select ? select.value : "";
  }

  function update() {
    for (const row of rows) {
      const wanted = row.dataset.showValues.split(" ");
      // A field with an error stays visible whatever is chosen: the error must be seen.
      row.hidden = !wanted.includes(chosen(row.dataset.showFor)) && !row.classList.contains("errors");
    }
  }

  form.addEventListener("change", update);
  update();
})();
