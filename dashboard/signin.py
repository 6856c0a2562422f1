"""The sign-in page (access control on, nobody signed in) and the sidebar's signed-in box.

The page is drawn by the router instead of any other page: nothing of the data directory
is read before someone signs in. Local accounts sign in with their name and credential
(a password field; the form clears it); OpenID providers configured in ``[auth]`` of
secrets.toml are offered as "Sign in with ..." buttons (``st.login``).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from tooltrail.dashboard import auth, ui
from tooltrail.errors import TooltrailError


def page(root: Path) -> None:
    ui.header("Sign in", "Access control is on for this data directory: sign in to continue.")
    ui.show_flash()
    left, _ = st.columns([2, 3])
    with left:
        why = auth.problem()
        if why:
            st.warning(ui.md(why), icon=":material/lock:")
        with st.form("signin", border=True):
            st.text_input("User name", key=auth.NAME_KEY, placeholder="e.g. alice")
            st.text_input(
                "Credential",
                key=auth.CREDENTIAL_KEY,
                type="password",
                placeholder="ttu_...",
                help="The credential `tooltrail users add` (or `rotate`) printed for you.",
            )
            st.form_submit_button(
                "Sign in",
                key="signin-submit",
                type="primary",
                icon=":material/login:",
                on_click=_submit,
                args=(str(root),),
            )
        stranger = auth.oidc_email()
        if stranger is not None:
            # Signed in at the provider as someone with no role here: let them switch.
            label = f"Sign out of {ui.md(stranger)}"
            if st.button(label, key="oidc-signout", icon=":material/logout:"):
                st.logout()
            return
        for provider in auth.oidc_providers():
            label = f"Sign in with {provider}" if provider else "Sign in with your organisation"
            if st.button(label, key=f"oidc-{provider or 'default'}", icon=":material/key:"):
                if provider:
                    st.login(provider)
                else:
                    st.login()
        st.caption(
            "No account? An admin adds you with `tooltrail users add NAME --role ROLE`"
            " (or maps your e-mail with `tooltrail users map-email`)."
        )


def _submit(root: str) -> None:
    """The form's callback: check the name and credential, then forget the credential
    (the widget keeps no copy once the form is done)."""
    name = str(st.session_state.get(auth.NAME_KEY) or "")
    credential = str(st.session_state.get(auth.CREDENTIAL_KEY) or "")
    st.session_state[auth.CREDENTIAL_KEY] = ""
    try:
        who = auth.sign_in(Path(root), name, credential)
    except TooltrailError as e:
        ui.flash(str(e), "error")
        return
    ui.flash(f"Signed in as {who.label}")


def signed_in_box(who: auth.Identity, root: Path) -> None:
    """Who is signed in, how, and Sign out; for an OpenID sign-in that may decide, which
    relay vouches for its decisions, or that none is configured."""
    via = "OpenID" if who.via == "oidc" else "local account"
    st.markdown(f"Signed in as **{ui.md(who.name)}**")
    st.caption(f"Role: {who.role} · {via}")
    if who.via == "oidc" and who.may("decide"):
        relay = auth.relay_name(root)
        if relay is not None:
            st.caption(f"Decisions vouched for by relay {ui.md(relay)}")
        else:
            st.caption(
                "Cannot decide: no relay signer (`tooltrail users add-relay`, then"
                " `[tooltrail] oidc_signer` in secrets.toml)"
            )
    if st.button("Sign out", key="signout", icon=":material/logout:"):
        auth.sign_out(who)
        st.rerun()


__all__ = ["page", "signed_in_box"]
