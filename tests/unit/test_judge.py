"""MT-Bench judge prompt and rating parsing."""
import math

from rlhf_ray.engines import judge


def test_single_prompt_carries_question_and_answer_in_mt_bench_format():
    msgs = judge.single_messages("What is 2 + 2?", "4")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "[Question]\nWhat is 2 + 2?\n\n[The Start of Assistant's Answer]\n4\n[The End of Assistant's Answer]" in msgs[1]["content"]
    assert '"[[rating]]"' in msgs[1]["content"]


def test_ratings():
    assert judge.parse_rating("Helpful and correct. Rating: [[8]]") == 8.0
    assert judge.parse_rating("Rating: [[7.5]]") == 7.5
    assert judge.parse_rating("I'd say [6]") == 6.0  # MT-Bench's fallback pattern
    assert math.isnan(judge.parse_rating("It is fine."))


def test_question_is_the_last_user_turn():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2 + 2?"}]
    assert judge.question_text(prompt) == "2 + 2?"


def test_the_endpoint_judge_sends_bounded_concurrent_requests_and_retries_rate_limits():
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = {"in_flight": 0, "peak": 0, "seen": set(), "calls": 0}
    lock = threading.Lock()

    class Judge(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            answer = body["messages"][1]["content"].split("[The Start of Assistant's Answer]\n")[1].split("\n")[0]
            with lock:
                state["calls"] += 1
                first = answer not in state["seen"]
                state["seen"].add(answer)
                state["in_flight"] += 1
                state["peak"] = max(state["peak"], state["in_flight"])
            time.sleep(0.2)
            with lock:
                state["in_flight"] -= 1
            if first:  # every conversation is rate-limited once: the client must come back
                payload, status = {"error": {"message": "slow down", "type": "rate_limit"}}, 429
            else:
                payload, status = {"id": "x", "object": "chat.completion", "created": 0, "model": "j", "choices": [
                    {"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": f"Rating: [[{answer}]]"}}]}, 200
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("retry-after-ms", "10")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = judge.OpenAIBackend(f"http://127.0.0.1:{server.server_port}/v1", "j", concurrency=3, max_retries=2)
        scorer = judge.JudgeScorer(backend)
        prompts = [[{"role": "user", "content": "Rate me"}]] * 7
        answers = [[{"role": "assistant", "content": str(i + 1)}] for i in range(7)]
        assert scorer.score(prompts, answers) == [float(i + 1) for i in range(7)]  # in order, after the retries
        assert state["calls"] == 14 and 2 <= state["peak"] <= 3
    finally:
        server.shutdown()
