// A real OpenID provider (the certified `oidc-provider` package) on loopback, for the
// dashboard's OIDC sign-in test. Usage: node oidc_provider.mjs CONFIG.json
//
// CONFIG: {"port": 0, "client_id": "...", "client_secret": "...", "redirect_uris": [...]}
// (port 0: any free port). Its own development login and consent pages are used: any login
// name signs in with any password, and the account's e-mail is that login name (verified).
// Prints {"issuer": "http://127.0.0.1:PORT"} once listening; stops on SIGTERM or SIGINT.
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import Provider from "oidc-provider";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));

const server = createServer();
await new Promise((resolve) => server.listen(config.port ?? 0, "127.0.0.1", resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: config.client_id,
      client_secret: config.client_secret,
      redirect_uris: config.redirect_uris,
      post_logout_redirect_uris: config.post_logout_redirect_uris ?? [],
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_basic",
    },
  ],
  claims: { openid: ["sub"], email: ["email", "email_verified"], profile: ["name"] },
  // Put the requested claims in the ID token, as Google, Okta or Entra do: Streamlit's
  // st.user is the ID token's claims.
  conformIdTokenClaims: false,
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: id, email_verified: true, name: id };
      },
    };
  },
  // Cookie signing keys: the per-run client secret (nothing fixed kept in the repository).
  cookies: { keys: [config.client_secret] },
  features: { devInteractions: { enabled: true } },
});
// The development pages and plain HTTP on loopback only: this is a test provider.
provider.proxy = false;
server.on("request", provider.callback());

const stop = () => server.close(() => process.exit(0));
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
process.stdout.write(JSON.stringify({ issuer }) + "\n");
