// TypeScript SDK scenarios against ANTHROPIC_BASE_URL, run in order; their results are printed
// as one JSON array on stdout.
//
//   ROUTER_TEST_NODE_MODULES=<dir holding node_modules> ANTHROPIC_BASE_URL=http://127.0.0.1:PORT \
//   ANTHROPIC_API_KEY=sk-ant-test-... node tests/clients/sdk.mjs create stream error ...
//
// tests/test_typescript_sdk.py runs the scenarios once against the fake upstream and once
// through the proxy and compares the outputs. One process runs them all because loading the SDK
// takes most of a run. An API error is printed, not thrown, so that the error class the SDK
// chose can be compared too.
import { createRequire } from 'node:module';
import path from 'node:path';

// The packages live in a cache directory outside the repository (see tests/node_clients.py).
const require = createRequire(path.join(process.env.ROUTER_TEST_NODE_MODULES, 'index.js'));
const sdk = require('@anthropic-ai/sdk');
const Anthropic = sdk.Anthropic;

const client = new Anthropic({ maxRetries: 0 });
const PROMPT = [{ role: 'user', content: 'Say hello.' }];
const WEATHER = {
  name: 'get_weather',
  description: 'Weather for a city',
  input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
};

function described(err) {
  if (!(err instanceof sdk.APIError)) throw err;
  // The most specific class the SDK exports that this error is an instance of.
  const classes = Object.entries(sdk)
    .filter(([name, value]) => name.endsWith('Error') && typeof value === 'function' && err instanceof value)
    .map(([name]) => name)
    .sort();
  return {
    error: {
      name: err.name,
      classes,
      status: err.status ?? null,
      type: err.type,
      apiMessage: err.apiMessage,
      requestIdShape: /^req_\w+$/.test(err.requestID ?? '') ? 'req_*' : err.requestID ?? null,
      retryAfter: err.headers?.get('retry-after') ?? null,
    },
  };
}

const scenarios = {
  async create() {
    const { data, response } = await client.messages
      .create({ model: 'claude-sonnet-4-6', max_tokens: 64, messages: PROMPT })
      .withResponse();
    return {
      message: data,
      requestId: response.headers.get('request-id'),
      routerModel: response.headers.get('x-router-model'),
    };
  },

  async stream() {
    const stream = client.messages.stream({
      model: 'claude-opus-4-7',
      max_tokens: 64,
      thinking: { type: 'adaptive' },
      messages: PROMPT,
    });
    let text = '';
    stream.on('text', (delta) => {
      text += delta;
    });
    const events = [];
    for await (const event of stream) events.push(event);
    return { events, text, final: await stream.finalMessage() };
  },

  async stream_error() {
    const seen = [];
    try {
      const stream = client.messages.stream({ model: 'claude-sonnet-4-6', max_tokens: 64, messages: PROMPT });
      for await (const event of stream) seen.push(event.type);
      return { seen, finished: true };
    } catch (err) {
      return { seen, ...described(err) };
    }
  },

  async count_tokens() {
    return client.messages.countTokens({ model: 'claude-sonnet-4-6', messages: PROMPT, tools: [WEATHER] });
  },

  async models() {
    const ids = [];
    // limit 3 makes the SDK follow several pages.
    for await (const model of client.models.list({ limit: 3 })) ids.push(model.id);
    const one = await client.models.retrieve('claude-haiku-4-5');
    return { ids, retrieved: one };
  },

  async tool_loop() {
    const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
    const request = { model: 'claude-haiku-4-5', max_tokens: 256, tools: [WEATHER] };
    const first = await client.messages.create({ ...request, messages });
    const call = first.content.find((block) => block.type === 'tool_use');
    messages.push({ role: 'assistant', content: first.content });
    messages.push({
      role: 'user',
      content: [{ type: 'tool_result', tool_use_id: call.id, content: '18 degrees and sunny' }],
    });
    const second = await client.messages.create({ ...request, messages });
    return { first, second };
  },

  // Claude Code's shape: the beta API, adaptive thinking, a session id, cache breakpoints on the
  // system and the last block, a trailing system message, a tool loop.
  async agent_loop() {
    const options = { headers: { 'x-claude-code-session-id': 'ts-agent-session', 'x-app': 'cli' } };
    const bash = {
      name: 'Bash',
      description: 'Run a shell command.',
      input_schema: { type: 'object', properties: { command: { type: 'string' } } },
    };
    const request = {
      model: 'claude-opus-4-8',
      max_tokens: 4096,
      tools: [bash],
      thinking: { type: 'adaptive' },
      system: [{ type: 'text', text: 'You are a coding agent in a terminal.', cache_control: { type: 'ephemeral' } }],
    };
    const reminder = { role: 'system', content: 'Reminder: stay concise.' };
    const ask = { role: 'user', content: [{ type: 'text', text: 'Why does CI fail? [[reply:tool=Bash]]' }] };
    const cached = (message) => ({
      ...message,
      content: message.content.map((b, i, all) => (i === all.length - 1 ? { ...b, cache_control: { type: 'ephemeral' } } : b)),
    });
    const turns = [];
    let messages = [cached(ask), reminder];
    for (let turn = 0; turn < 3; turn++) {
      const { data, response } = await client.beta.messages.create({ ...request, messages }, options).withResponse();
      turns.push({ message: data, routerModel: response.headers.get('x-router-model'),
                   conversation: response.headers.get('x-router-conversation') });
      const call = data.content.find((block) => block.type === 'tool_use');
      if (!call) break;
      const next = turn === 1 ? 'all green now' : 'FAILED test_x.py [[reply:tool=Bash]]';
      messages = [ask, { role: 'assistant', content: data.content },
                  cached({ role: 'user', content: [{ type: 'tool_result', tool_use_id: call.id, content: next }] }),
                  reminder];
    }
    return { turns };
  },

  async error() {
    try {
      await client.messages.create({ model: 'claude-sonnet-4-6', max_tokens: 8, messages: PROMPT });
      return { error: null };
    } catch (err) {
      return described(err);
    }
  },
};

const names = process.argv.slice(2);
const unknown = names.filter((name) => !(name in scenarios));
if (unknown.length > 0 || names.length === 0) {
  console.error(`unknown scenario ${unknown}; use some of: ${Object.keys(scenarios).join(', ')}`);
  process.exit(2);
}
const results = [];
for (const name of names) results.push(await scenarios[name]());
process.stdout.write(JSON.stringify(results));
