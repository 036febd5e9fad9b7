"""The chat session: tokens in, events out, the KV prefix reused, tool rounds, Ctrl-C, save/load."""

from __future__ import annotations

import json

import pytest
from chat_support import FakeTools, ids

from gptoss_cli.chat.session import RoundDone, Sampling, Session, SessionFileError, ToolFinished
from gptoss_cli.engine.scripted import ScriptedEngine
from gptoss_cli.errors import ContextLengthError
from gptoss_cli.harmony import CALL, END, ChatOptions, MessageStart, TextDelta, render_prompt
from gptoss_cli.harmony.tokenizer import START

pytest_plugins = ("chat_fixtures",)

OPTIONS = ChatOptions(current_date="2025-08-05")
HELLO = "<|channel|>final<|message|>Hello there!<|return|>"
THINK_THEN_ANSWER = ("<|channel|>analysis<|message|>The user greets me.<|end|>"
                     "<|start|>assistant<|channel|>final<|message|>Hi!<|return|>")


def make(tok, *responses: str, **kwargs) -> tuple[Session, ScriptedEngine]:
    engine = ScriptedEngine([ids(tok, r) for r in responses], context_length=kwargs.pop("context_length", 131072))
    return Session(engine, tok, kwargs.pop("options", OPTIONS), **kwargs), engine


def test_a_turn_streams_the_final_answer_and_records_it(chat_tokenizer):
    session, engine = make(chat_tokenizer, THINK_THEN_ANSWER)
    events = list(session.send("Hello"))
    deltas = "".join(e.text for e in events if isinstance(e, TextDelta) and e.channel == "final")
    assert deltas == "Hi!"
    assert session.last.final == "Hi!" and session.last.reasoning == "The user greets me."
    assert session.last.finish_reason == "stop"
    assert isinstance(events[-1], RoundDone)
    assert engine.prompts[0] == render_prompt([{"role": "user", "content": "Hello"}], chat_tokenizer, OPTIONS)


def test_second_turn_prefills_only_its_new_tokens(chat_tokenizer):
    session, engine = make(chat_tokenizer, HELLO, HELLO)
    list(session.send("Hello"))
    first_prompt, first_reply = engine.prompts[0], ids(chat_tokenizer, HELLO)
    list(session.send("And again"))
    second_prompt = engine.prompts[1]
    # The engine holds the first prompt and the reply minus its last token (<|return|>, never fed back),
    # which the history stores as <|end|>: everything after that is the new turn, and only that is computed.
    kept = len(first_prompt) + len(first_reply) - 1
    assert second_prompt[:kept] == first_prompt + first_reply[:-1]
    assert second_prompt[kept] == END
    assert session.last.reused_tokens == kept
    assert session.last.prefill_tokens == len(second_prompt) - kept
    new_turn = ids(chat_tokenizer, "<|end|><|start|>user<|message|>And again<|end|><|start|>assistant")
    assert session.last.prefill_tokens == len(new_turn)


def test_a_finished_turns_reasoning_is_dropped_and_only_the_rest_reprefilled(chat_tokenizer):
    session, engine = make(chat_tokenizer, THINK_THEN_ANSWER, HELLO)
    list(session.send("Hello"))
    list(session.send("Bye"))
    first, second = engine.prompts
    # Kept: everything up to the dropped analysis message, whose "<|start|>assistant<|channel|>" the final
    # message shares; recomputed: the rest of the first reply's final message and the new turn.
    reused = session.last.reused_tokens
    assert reused == len(first) + 1
    assert "The user greets me." not in chat_tokenizer.decode(second)
    assert chat_tokenizer.decode(second[reused:]) == ("final<|message|>Hi!<|end|><|start|>user<|message|>Bye<|end|>"
                                                      "<|start|>assistant")


def test_prefix_reuse_with_the_real_engine(tiny_chat_model):
    import torch

    import gptoss_cli
    from gptoss_cli.harmony.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(tiny_chat_model)
    engine = gptoss_cli.load(tiny_chat_model, device="cpu", dtype=torch.float32, context_length=1024)
    session = Session(engine, tok, OPTIONS, Sampling(max_tokens=6, seed=0))
    list(session.send("Hello"))
    history_after_first = session.tokens()
    list(session.send("Tell me more"))
    second_prompt = len(history_after_first) + len(ids(tok, "<|start|>user<|message|>Tell me more<|end|>"
                                                           "<|start|>assistant"))
    assert session.last.prompt_tokens == second_prompt
    # The first reply was cut at 6 tokens: its last token was never fed to the model and the history closes
    # it with <|end|>; those two differ from the cache, everything before them is reused.
    assert engine.stats.reused_tokens == len(history_after_first) - 2
    assert engine.stats.prefill_tokens == second_prompt - engine.stats.reused_tokens


def test_tool_call_is_approved_run_and_generation_continues(chat_tokenizer):
    call = ("<|channel|>analysis<|message|>Compute it.<|end|><|start|>assistant<|channel|>analysis to=python"
            "<|message|>print(17 * 23)\nprint('done')<|call|>")
    answer = "<|channel|>final<|message|>It is 391.<|return|>"
    asked = []
    tools = FakeTools(python=lambda code: "391\ndone\n", approve=lambda c: asked.append(c) or True)
    session, engine = make(chat_tokenizer, call, answer, tools=tools)
    events = list(session.send("What is 17*23?"))
    finished = [e for e in events if isinstance(e, ToolFinished)]
    assert [(f.status, f.output) for f in finished] == [("ok", "391\ndone\n")]
    assert tools.calls == [("python", "print(17 * 23)\nprint('done')", "analysis")]
    assert len(asked) == 1 and asked[0].recipient == "python"
    assert session.last.final == "It is 391."
    # The second round's prompt is the first one plus the call and its result, appended: the cache is kept.
    assert engine.prompts[1][: len(engine.prompts[0])] == engine.prompts[0]
    tail = chat_tokenizer.decode(engine.prompts[1][len(engine.prompts[0]):])
    assert tail.endswith("<|call|><|start|>python to=assistant<|channel|>analysis<|message|>391\ndone\n<|end|>"
                         "<|start|>assistant")
    assert "Compute it." in tail  # reasoning inside an unfinished tool loop is kept
    assert session.last.reused_tokens == 0 and engine.stats.reused_tokens == len(engine.prompts[0]) + len(
        ids(chat_tokenizer, call)) - 1


def test_function_call_with_bad_json_is_answered_as_an_error_without_asking(chat_tokenizer):
    bad = "<|channel|>commentary to=functions.weather <|constrain|>json<|message|>{\"city\": Paris}<|call|>"
    good = "<|channel|>commentary to=functions.weather <|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>"
    final = "<|channel|>final<|message|>Sunny.<|return|>"
    asked = []
    tools = FakeTools(functions={"weather": lambda city: json.dumps({"city": city, "sky": "sunny"})},
                      approve=lambda c: asked.append(c) or True)
    session, engine = make(chat_tokenizer, bad, good, final, tools=tools)
    events = list(session.send("Weather in Paris?"))
    statuses = [e.status for e in events if isinstance(e, ToolFinished)]
    assert statuses == ["invalid", "ok"]
    assert len(asked) == 1  # the malformed call was never offered for approval
    error_text = chat_tokenizer.decode(engine.prompts[1])
    assert ("<|start|>functions.weather to=assistant<|channel|>commentary<|message|>"
            "Error: arguments are not valid JSON") in error_text
    assert tools.calls == [("functions.weather", '{"city": "Paris"}', "commentary")]
    assert session.last.final == "Sunny."


def test_unknown_tool_denied_call_and_failing_tool_reach_the_model_as_errors(chat_tokenizer):
    unknown = "<|channel|>commentary to=functions.nope <|constrain|>json<|message|>{}<|call|>"
    py = "<|channel|>analysis to=python<|message|>1/0<|call|>"
    final = "<|channel|>final<|message|>Done.<|return|>"

    def boom(code: str) -> str:
        raise ZeroDivisionError("division by zero")

    decisions = iter([False, True])
    session, engine = make(chat_tokenizer, unknown, py, py, final,
                           tools=FakeTools(python=boom, approve=lambda c: next(decisions)))
    events = list(session.send("go"))
    done = [e for e in events if isinstance(e, ToolFinished)]
    assert [d.status for d in done] == ["unknown", "denied", "error"]
    assert "unknown tool 'functions.nope'" in done[0].output
    assert done[1].output == "The user denied this tool call."
    assert "ZeroDivisionError" in done[2].output
    assert session.last.final == "Done." and session.last.finish_reason == "stop"


def test_consecutive_tool_calls_are_bounded(chat_tokenizer):
    py = "<|channel|>analysis to=python<|message|>x += 1<|call|>"
    tools = FakeTools(python=lambda code: "")
    session, engine = make(chat_tokenizer, py, py, py, tools=tools, max_tool_calls=2)
    events = list(session.send("loop forever"))
    assert [e.status for e in events if isinstance(e, ToolFinished)] == ["ok", "ok", "limit"]
    assert len(tools.calls) == 2 and len(engine.prompts) == 3
    assert session.last.finish_reason == "tool_limit"
    assert session.tokens()[-1] == END  # the unrun call is answered, so the history stays well-formed


def test_cancel_keeps_the_partial_reply_and_the_session_goes_on(chat_tokenizer):
    long = "<|channel|>final<|message|>" + "word " * 50 + "<|return|>"
    session, engine = make(chat_tokenizer, long, HELLO)
    seen = 0
    for event in session.send("Talk"):
        if isinstance(event, TextDelta):
            seen += 1
            if seen == 5:
                session.cancel()
    assert session.last.finish_reason == "cancelled"
    assert session.last.final.startswith("word wor") and len(session.last.final) < len("word " * 50)
    assert session.tokens()[-1] == END  # closed with <|end|>
    list(session.send("Hi"))
    assert session.last.final == "Hello there!" and session.last.reused_tokens > 0


def test_interrupt_inside_the_engine_is_a_cancel(chat_tokenizer):
    class Interrupting(ScriptedEngine):
        def generate(self, *args, **kwargs):
            for i, token in enumerate(super().generate(*args, **kwargs)):
                if i == 4:
                    raise KeyboardInterrupt
                yield token

    session = Session(Interrupting([ids(chat_tokenizer, HELLO)]), chat_tokenizer, OPTIONS)
    events = list(session.send("Hi"))
    assert session.last.finish_reason == "cancelled"
    assert any(isinstance(e, MessageStart) for e in events)
    assert session.tokens()[-1] == END


def test_max_tokens_cuts_the_turn(chat_tokenizer):
    session, _ = make(chat_tokenizer, THINK_THEN_ANSWER, sampling=Sampling(max_tokens=4))
    list(session.send("Hello"))
    assert session.last.finish_reason == "length" and session.last.completion_tokens == 4 and session.last.truncated


def test_a_message_that_does_not_fit_the_context_is_refused_and_not_kept(chat_tokenizer):
    session, _ = make(chat_tokenizer, HELLO, context_length=120)
    before = session.tokens()
    with pytest.raises(ContextLengthError, match="context holds 120"):
        session.send("word " * 200)
    assert session.tokens() == before


def test_context_filling_up_mid_reply_is_reported(chat_tokenizer):
    prompt = make(chat_tokenizer)[0].prompt_tokens() + ids(chat_tokenizer, "<|start|>user<|message|>Hi<|end|>")
    session, engine = make(chat_tokenizer, "<|channel|>final<|message|>" + "word " * 40 + "<|return|>",
                           context_length=len(prompt) + 10)
    room = 10
    list(session.send("Hi"))
    assert session.last.finish_reason == "context" and session.last.completion_tokens == room


def test_changing_effort_rewrites_the_system_message_and_keeps_the_history(chat_tokenizer):
    session, engine = make(chat_tokenizer, HELLO, HELLO)
    list(session.send("Hello"))
    history = session.tokens()
    session.set_options(reasoning_effort="high")
    assert "Reasoning: high" in chat_tokenizer.decode(session.tokens())
    assert chat_tokenizer.decode(session.tokens()).endswith(chat_tokenizer.decode(history[-8:]))
    list(session.send("Again"))
    assert "Reasoning: high" in chat_tokenizer.decode(engine.prompts[1])


def test_save_then_load_resumes_the_exact_tokens(chat_tokenizer, tmp_path):
    call = "<|channel|>analysis to=python<|message|>print(1)<|call|>"
    tools = FakeTools(python=lambda code: "1\n")
    session, _ = make(chat_tokenizer, THINK_THEN_ANSWER, call, HELLO, tools=tools,
                      options=ChatOptions(current_date="2025-08-05", reasoning_effort="low", instructions="Be brief."))
    list(session.send("Hello"))
    list(session.send("Use python"))
    path = session.save(tmp_path / "chat.json", model="tiny")
    engine = ScriptedEngine([ids(chat_tokenizer, HELLO)])
    resumed = Session(engine, chat_tokenizer, OPTIONS)
    resumed.load(path)
    assert resumed.tokens() == session.tokens()
    assert resumed.options.reasoning_effort == "low" and resumed.options.instructions == "Be brief."
    list(resumed.send("Next"))
    assert engine.prompts[0][: len(session.tokens())] == session.tokens()


def test_loading_a_damaged_or_foreign_file_fails_cleanly(chat_tokenizer, tmp_path):
    session, _ = make(chat_tokenizer, HELLO)
    list(session.send("Hello"))
    good = session.save(tmp_path / "s.json")
    before = session.tokens()
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(SessionFileError, match="not a session file"):
        session.load(tmp_path / "junk.json")
    tampered = json.loads(good.read_text())
    tampered["tokens"][3] += 1
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    with pytest.raises(SessionFileError, match="does not replay"):
        session.load(tmp_path / "tampered.json")
    assert session.tokens() == before


def test_reset_forgets_the_history_but_keeps_the_system_prompt_cached(chat_tokenizer):
    session, engine = make(chat_tokenizer, HELLO, HELLO)
    list(session.send("Hello"))
    session.reset()
    assert session.messages == 0
    list(session.send("Hello"))
    assert engine.prompts[1] == engine.prompts[0]
    assert session.last.reused_tokens == len(engine.prompts[0]) - 1
    assert engine.prompts[0].count(START) == 3 and CALL not in engine.prompts[0]


def test_an_engine_failure_before_any_token_leaves_the_conversation_as_it_was(chat_tokenizer):
    session, engine = make(chat_tokenizer, HELLO)
    list(session.send("Hello"))
    before, last = session.tokens(), session.last
    with pytest.raises(RuntimeError, match="no scripted response left"):
        list(session.send("Again"))
    assert session.tokens() == before and session.last is last and len(session.turns) == 1
