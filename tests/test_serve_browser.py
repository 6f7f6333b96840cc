"""The chat page at ``/`` in a real headless Chromium (Selenium), against a real uvicorn server.

Needs Debian's ``chromium`` and ``chromium-driver`` packages (/usr/bin/chromium, /usr/bin/chromedriver);
``.ci/run`` installs them. The page is typed into and sent like a user would; what it renders must be
what the server answers the same greedy request with, reasoning apart from the answer when thinking is on.
"""

from __future__ import annotations

import os

import openai
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from checkpoints import save_reference
from qwen3lab import LLM
from qwen3lab.serve import ServerConfig, build_app
from serve_fixtures import KEY, ServerThread
from train_helpers import TINY, random_adapter

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_TOKENS = 12

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is absent: apt-get install chromium chromium-driver "
                                       "(.ci/run does)")


@pytest.fixture(scope="module")
def server(scratch):
    folder = save_reference(scratch("tiny-qwen3-browser"), "qwen3", num_hidden_layers=2, hidden_size=64,
                            intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16)[0]
    llm = LLM(str(folder), dtype="float32", max_model_len=512, kv_cache_memory_gb=0.05)
    with ServerThread(build_app(llm, ServerConfig(served_model_names=["tiny"], api_key=KEY))) as s:
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    assert os.path.exists(CHROMEDRIVER), f"{CHROMEDRIVER} is missing: apt-get install chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def ask(browser, text: str) -> dict:
    """Type ``text``, press Enter, wait for the reply to finish; the last assistant bubble's parts."""
    before = len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant"))
    browser.find_element(By.ID, "input").send_keys(text + Keys.ENTER)
    WebDriverWait(browser, 60).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='1']")) > before)
    box = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]
    assert not box.find_elements(By.CSS_SELECTOR, ".error"), box.text
    reasoning = box.find_element(By.CSS_SELECTOR, "details.reasoning")
    return {"user": browser.find_elements(By.CSS_SELECTOR, ".msg.user")[-1].text.split("\n", 1)[-1],  # after "YOU"
            "answer_html": box.find_element(By.CSS_SELECTOR, ".answer").get_attribute("innerHTML"),
            "answer_text": box.find_element(By.CSS_SELECTOR, ".answer").get_attribute("textContent"),
            "reasoning_shown": not reasoning.get_attribute("hidden"),
            "reasoning": reasoning.find_element(By.CSS_SELECTOR, ".body").get_attribute("textContent"),
            "stats": box.find_element(By.CSS_SELECTOR, ".stats").text,
            "history": browser.execute_script("return history")}


def test_chat_page_streams_the_greedy_answer(server, browser):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)

    def whole(text: str, thinking: bool):
        return client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": text}], max_tokens=MAX_TOKENS, temperature=0,
            extra_body={"chat_template_kwargs": {"enable_thinking": thinking}}).choices[0].message

    browser.get(f"{server.url}/?max_tokens={MAX_TOKENS}&temperature=0")
    browser.find_element(By.ID, "key").send_keys(KEY)
    think = browser.find_element(By.ID, "think")
    assert think.is_selected()  # thinking is on by default
    think.click()
    assert not think.is_selected()

    # Thinking off: the streamed answer is the server's greedy answer, rendered, with no reasoning.
    text = "Name a colour."
    got, want = ask(browser, text), whole(text, thinking=False)
    assert got["user"] == text
    assert want.content and got["history"][-1] == {"role": "assistant", "content": want.content}
    assert got["answer_text"].strip()
    assert got["answer_html"] == browser.execute_script("return renderMarkdown(arguments[0])", want.content)
    assert not got["reasoning_shown"] and got["reasoning"] == ""
    assert "finish: length" in got["stats"] and f"{MAX_TOKENS} tokens" in got["stats"]

    # Thinking on, in a new chat: the random model never closes </think>, so all it says is reasoning,
    # shown in its own <details> and not in the answer.
    browser.find_element(By.ID, "clear").click()
    think.click()
    assert think.is_selected()
    text = "Why is the sky blue?"
    got, want = ask(browser, text), whole(text, thinking=True)
    assert want.reasoning_content and not want.content
    assert got["reasoning_shown"] and got["reasoning"] == want.reasoning_content
    assert got["answer_text"] == "" and got["history"] == [{"role": "user", "content": text},
                                                            {"role": "assistant", "content": ""}]


def test_chat_page_picks_a_lora_adapter(scratch, browser):
    from selenium.webdriver.support.ui import Select

    root = scratch("tiny-qwen3-lora-page")
    base = save_reference(root / "base", "qwen3", **TINY)[0]
    adapter = random_adapter(base, root / "adapter", 4, ("q_proj", "v_proj", "down_proj"))
    llm = LLM(str(base), dtype="float32", max_model_len=512, kv_cache_memory_gb=0.05,
              lora_adapters={"mine": adapter})
    with ServerThread(build_app(llm, ServerConfig(served_model_names=["tiny"], api_key=KEY))) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        text = "Name a colour."

        def whole(model: str) -> str:
            return client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": text}], max_tokens=MAX_TOKENS, temperature=0,
                extra_body={"chat_template_kwargs": {"enable_thinking": False}}).choices[0].message.content

        browser.get(f"{server.url}/?max_tokens={MAX_TOKENS}&temperature=0&think=0")
        key = browser.find_element(By.ID, "key")
        key.clear()
        key.send_keys(KEY + Keys.TAB)  # the models list needs the key; the page asks again on change
        WebDriverWait(browser, 30).until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2)
        picker = Select(browser.find_element(By.ID, "model"))
        assert [o.get_attribute("value") for o in picker.options] == ["tiny", "mine"]
        picker.select_by_value("mine")
        got, want = ask(browser, text), whole("mine")
        assert want != whole("tiny")  # the adapter changes the answer, so the page's choice is visible
        assert got["history"][-1] == {"role": "assistant", "content": want}
