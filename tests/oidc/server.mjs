// A real OAuth 2.0 authorization server (oidc-provider) for shiftkey's integration tests.
//
// Started by the Rust test harness (`tests/src/oidc.rs`) on a loopback port. Everything it needs
// comes from environment variables so one script serves every test:
//   PORT          port to listen on (0 = any free port; the chosen one is printed)
//   ACCESS_TTL    access-token lifetime in seconds (default 3600)
//   REFRESH_TTL   refresh-token lifetime in seconds (default 86400)
//   KEY_OUT       where to write the PEM private key of the `svc-jwt` client (private_key_jwt)
//   RSA_KEY_OUT   where to write the PEM RSA key of the `svc-jwt-rs256` and `svc-jwt-ps256` clients
// The first stdout line is `{"ready":true,"issuer":...,"port":...}`; every later line is one JSON
// event (`grant.success`, `grant.error` with the real cause) so tests can count token-endpoint calls.
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import Provider, { errors } from 'oidc-provider';

const env = (name, fallback) => process.env[name] ?? fallback;
const accessTtl = Number(env('ACCESS_TTL', '3600'));
const refreshTtl = Number(env('REFRESH_TTL', '86400'));

// The private_key_jwt client's key pair: the public half goes into the client's jwks, the private
// half into KEY_OUT for the Rust side to sign assertions with.
const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...publicKey.export({ format: 'jwk' }), kid: 'svc-jwt-key', alg: 'ES256', use: 'sig' };
if (process.env.KEY_OUT) {
  writeFileSync(process.env.KEY_OUT, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
}
// One RSA key for the RS256 and PS256 clients (`svc-jwt-rs256`, `svc-jwt-ps256`), its private
// half in RSA_KEY_OUT.
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const rsaJwk = { ...rsa.publicKey.export({ format: 'jwk' }), kid: 'svc-rsa-key', use: 'sig' };
if (process.env.RSA_KEY_OUT) {
  writeFileSync(process.env.RSA_KEY_OUT, rsa.privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
}

const USERS = { alice: 'wonderland' };

const configuration = {
  clients: [
    { client_id: 'svc-basic', client_secret: 'svc-basic-secret', grant_types: ['client_credentials'],
      response_types: [], redirect_uris: [], token_endpoint_auth_method: 'client_secret_basic' },
    { client_id: 'svc-post', client_secret: 'svc-post-secret', grant_types: ['client_credentials'],
      response_types: [], redirect_uris: [], token_endpoint_auth_method: 'client_secret_post' },
    { client_id: 'svc-jwt', grant_types: ['client_credentials'], response_types: [], redirect_uris: [],
      token_endpoint_auth_method: 'private_key_jwt', token_endpoint_auth_signing_alg: 'ES256',
      jwks: { keys: [jwk] } },
    ...['RS256', 'PS256'].map((alg) => ({
      client_id: `svc-jwt-${alg.toLowerCase()}`, grant_types: ['client_credentials'], response_types: [],
      redirect_uris: [], token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: alg, jwks: { keys: [rsaJwk] } })),
    { client_id: 'app', client_secret: 'app-secret', grant_types: ['password', 'refresh_token'],
      response_types: [], redirect_uris: [], token_endpoint_auth_method: 'client_secret_basic' },
    // A person's one-time login (`shiftkey token login`): a public native client with the device
    // grant and the authorization code grant (PKCE), redirecting to any loopback port (RFC 8252).
    { client_id: 'login-app', application_type: 'native', token_endpoint_auth_method: 'none',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'authorization_code', 'refresh_token'],
      response_types: ['code'], redirect_uris: ['http://127.0.0.1/callback'] },
  ],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    devInteractions: { enabled: false },
    deviceFlow: { enabled: true },
  },
  // The person's side of a login is played by the test routes below (see `approve`).
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  scopes: ['openid', 'offline_access', 'api'],
  rotateRefreshToken: true,
  issueRefreshToken: async () => true,
  findAccount: async (_ctx, sub) => (USERS[sub] ? { accountId: sub, claims: async () => ({ sub }) } : undefined),
  ttl: {
    AccessToken: accessTtl,
    ClientCredentials: accessTtl,
    RefreshToken: refreshTtl,
    Grant: refreshTtl,
    IdToken: accessTtl,
  },
};

const server = createServer();
server.listen(Number(env('PORT', '0')), '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, configuration);

  // The headless way to get a refresh token: a `password` grant, so ordinary OAuth clients
  // (oauth2-rs `exchange_password`, authlib, requests-oauthlib) use it unchanged.
  provider.registerGrantType('password', async (ctx) => {
    const { username, password } = ctx.oidc.params;
    if (!username || USERS[username] !== password) {
      throw new errors.InvalidGrant('bad username or password');
    }
    const { client } = ctx.oidc;
    const scope = 'openid offline_access api';
    const grant = new provider.Grant({ accountId: username, clientId: client.clientId });
    grant.addOIDCScope(scope);
    const grantId = await grant.save();
    const common = { accountId: username, client, grantId, gty: 'password', scope };
    const at = new provider.AccessToken(common);
    const rt = new provider.RefreshToken({ ...common, rotations: 0 });
    ctx.body = {
      access_token: await at.save(),
      expires_in: at.expiration,
      token_type: 'Bearer',
      refresh_token: await rt.save(),
      scope,
    };
  }, ['username', 'password', 'scope']);

  const emit = (event, ctx, extra = {}) => {
    const params = ctx?.oidc?.params ?? {};
    process.stdout.write(`${JSON.stringify({ event, grant_type: params.grant_type, client_id: ctx?.oidc?.client?.clientId, ...extra })}\n`);
  };
  provider.on('grant.success', (ctx) => emit('grant.success', ctx));
  provider.on('grant.error', (ctx, err) => emit('grant.error', ctx, { error: err.error, cause: err.error_description, detail: err.error_detail }));
  provider.on('grant.revoked', (ctx, grantId) => emit('grant.revoked', ctx, { grant_id: grantId }));

  // What a person does in a browser, done by the tests: alice signs in and consents to what the
  // client asked for, exactly as an interaction would end (a new Grant, then the code or the
  // interaction marked done). `POST /test/device?user_code=…[&deny=1]` approves (or refuses) a
  // device code; `GET /interaction/:uid` finishes a browser login at once.
  const approve = async (clientId, scope) => {
    const grant = new provider.Grant({ accountId: 'alice', clientId });
    grant.addOIDCScope(scope || 'openid offline_access api');
    return grant.save();
  };
  const callback = provider.callback();
  server.on('request', async (req, res) => {
    try {
      const url = new URL(req.url, issuer);
      if (req.method === 'POST' && url.pathname === '/test/device') {
        const userCode = (url.searchParams.get('user_code') ?? '').replace(/[^a-z]/gi, '').toUpperCase();
        const code = await provider.DeviceCode.findByUserCode(userCode);
        if (!code) { res.statusCode = 404; res.end('no such user code'); return; }
        if (url.searchParams.get('deny')) {
          Object.assign(code, { error: 'access_denied', errorDescription: 'End-User refused the login' });
        } else {
          Object.assign(code, { accountId: 'alice', grantId: await approve(code.clientId, code.scope) });
        }
        await code.save();
        process.stdout.write(`${JSON.stringify({ event: 'device.decided', client_id: code.clientId })}\n`);
        res.end('ok');
        return;
      }
      if (req.method === 'GET' && url.pathname.startsWith('/interaction/')) {
        const details = await provider.interactionDetails(req, res);
        const grantId = await approve(details.params.client_id, details.params.scope);
        await provider.interactionFinished(req, res, { login: { accountId: 'alice' }, consent: { grantId } }, { mergeWithLastSubmission: false });
        return;
      }
    } catch (e) {
      res.statusCode = 500;
      res.end(String(e));
      return;
    }
    callback(req, res);
  });
  process.stdout.write(`${JSON.stringify({ ready: true, issuer, port })}\n`);
});

// Die with the parent: the test harness closes our stdin when it drops us.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
