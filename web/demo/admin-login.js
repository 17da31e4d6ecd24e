// The admin sign-in: the token goes once to /api/v1/admin/login, which answers with an
// admin cookie of its own (HttpOnly: this script never sees it); then /admin again.

const form = document.getElementById('login-form');
const input = document.getElementById('admin-token');
const error = document.getElementById('login-error');

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  error.hidden = true;
  const button = form.querySelector('button');
  button.disabled = true;
  try {
    const response = await fetch('/api/v1/admin/login', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token: input.value }),
      credentials: 'same-origin',
    });
    if (response.ok) {
      window.location.assign('/admin');
      return;
    }
    let message = `Sign-in failed (${response.status})`;
    try {
      const body = await response.json();
      message = body.error?.message ?? message;
    } catch {
      // Not our JSON: keep the status.
    }
    if (response.status === 429) {
      const wait = response.headers.get('retry-after');
      if (wait) message += ` (wait ${wait} s)`;
    }
    error.textContent = message;
    error.hidden = false;
    input.select();
  } catch {
    error.textContent = 'The server could not be reached.';
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
});
