// The official openai Node SDK as a client of sluicegate, driven by tests/e2e/test_node_sdk.py.
//
// Input: one JSON spec as argv[2], or on stdin when there is no argument:
//   {baseURL, apiKey, model, scenario?, messages?, mode, tools?, includeUsage?}
//   mode: "stream"       raw iteration of chat.completions.create({stream: true})
//         "usage"        the same with stream_options.include_usage
//         "nonstream"    chat.completions.create() without streaming
//         "helper_tools" chat.completions.stream({..., tools}).finalChatCompletion()
// Output (stdout, one line of JSON):
//   {ok, text, finishReasons, usage, usageChunks, chunks, ids, models, roles, toolCalls, finalMessage, error}
//   error is {name, code, type, status, message} when the SDK threw, else null. The exit status is 0 whenever a
//   result was printed (an SDK error is a result); 2 means the spec itself was unusable.
import OpenAI from "openai";

async function readSpec() {
  if (process.argv[2]) return JSON.parse(process.argv[2]);
  let raw = "";
  for await (const part of process.stdin) raw += part;
  return JSON.parse(raw);
}

function describeError(err) {
  return {
    name: err?.constructor?.name ?? typeof err,
    isAPIError: err instanceof OpenAI.APIError,
    code: err?.code ?? null,
    type: err?.type ?? null,
    status: err?.status ?? null,
    message: String(err?.message ?? err),
  };
}

async function run(spec) {
  const client = new OpenAI({ baseURL: spec.baseURL, apiKey: spec.apiKey, maxRetries: 0, timeout: 20_000 });
  const messages = spec.messages ?? [{ role: "user", content: `hello scenario:${spec.scenario ?? "normal"}` }];
  const result = {
    ok: false,
    text: "",
    finishReasons: [],
    usage: null,
    usageChunks: 0,
    chunks: 0,
    ids: [],
    models: [],
    roles: [],
    toolCalls: null,
    finalMessage: null,
    error: null,
  };
  const onChunk = (chunk) => {
    result.chunks += 1;
    if (!result.ids.includes(chunk.id)) result.ids.push(chunk.id);
    if (!result.models.includes(chunk.model)) result.models.push(chunk.model);
    if (chunk.usage) {
      result.usageChunks += 1;
      result.usage = chunk.usage;
    }
    for (const choice of chunk.choices ?? []) {
      if (choice.delta?.role) result.roles.push(choice.delta.role);
      if (choice.delta?.content) result.text += choice.delta.content;
      if (choice.finish_reason) result.finishReasons.push(choice.finish_reason);
    }
  };
  try {
    const base = { model: spec.model, messages };
    if (spec.mode === "stream" || spec.mode === "usage") {
      const params = { ...base, stream: true };
      if (spec.mode === "usage" || spec.includeUsage) params.stream_options = { include_usage: true };
      const stream = await client.chat.completions.create(params);
      for await (const chunk of stream) onChunk(chunk);
    } else if (spec.mode === "nonstream") {
      const completion = await client.chat.completions.create(base);
      result.ids.push(completion.id);
      result.models.push(completion.model);
      result.text = completion.choices[0]?.message?.content ?? "";
      result.finishReasons = completion.choices.map((c) => c.finish_reason);
      result.usage = completion.usage ?? null;
      result.finalMessage = completion.choices[0]?.message ?? null;
    } else if (spec.mode === "helper_tools") {
      const params = { ...base, tools: spec.tools ?? [] };
      if (spec.includeUsage) params.stream_options = { include_usage: true };
      const stream = client.chat.completions.stream(params);
      stream.on("chunk", onChunk);
      const final = await stream.finalChatCompletion();
      const choice = final.choices[0];
      result.finalMessage = choice?.message ?? null;
      result.toolCalls = choice?.message?.tool_calls ?? null;
      result.finishReasons = final.choices.map((c) => c.finish_reason);
      result.usage = final.usage ?? result.usage;
      result.ids = [final.id];
      result.models = [final.model];
    } else {
      throw new Error(`unknown mode ${JSON.stringify(spec.mode)}`);
    }
    result.ok = true;
  } catch (err) {
    result.error = describeError(err);
  }
  return result;
}

let spec;
try {
  spec = await readSpec();
} catch (err) {
  process.stderr.write(`sdk_client.mjs: unusable spec: ${err}\n`);
  process.exit(2);
}
process.stdout.write(JSON.stringify(await run(spec)) + "\n");
