// Fields marked data-select-on-focus select their whole value when focused, so a member can
// copy their referral link in one go. (An external file: the Content-Security-Policy allows no
// inline event handlers.)
document.addEventListener("focusin", (event) => {
  const field = event.target;
  if (field instanceof HTMLInputElement && field.hasAttribute("data-select-on-focus")) {
    field.select();
  }
});
