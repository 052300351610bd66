"""The load scenario: simulated users of many accounts doing what the app's users do.

Each simulated user belongs to one account, drawn at random from LOAD_ACCOUNTS accounts
(ids LOAD_FIRST_ACCOUNT …, 1,000 by default: what `manage.py seed` made), and loops over
the app's requests with a short think time (LOAD_THINK_MS, uniformly 0–2× it): mostly
reads (dashboard, project page, task page, stats), some writes (a new task with tags, a
status change, a comment). Every request goes through the whole Django stack and its
queries through the pooler under test. Run by load/run.sh; alone:

    locust -f load/locustfile.py --headless -u 50 -r 25 -t 60s --host http://127.0.0.1:8000
"""

import os
import random

from locust import HttpUser, between, task

ACCOUNTS = int(os.environ.get("LOAD_ACCOUNTS", "1000"))
FIRST = int(os.environ.get("LOAD_FIRST_ACCOUNT", "1"))
THINK = int(os.environ.get("LOAD_THINK_MS", "100")) / 1000.0


class AccountUser(HttpUser):
    wait_time = between(0, 2 * THINK)

    def on_start(self):
        self.account = random.randint(FIRST, FIRST + ACCOUNTS - 1)
        self.base = f"/a/{self.account}"
        dash = self.client.get(f"{self.base}/", name="/a/[id]/").json()
        self.projects = [p["id"] for p in dash["projects"]]
        self.members = [m["id"] for m in dash["members"]]
        page = self.client.get(
            f"{self.base}/projects/{self.projects[0]}/", name="/a/[id]/projects/[p]/"
        ).json()
        self.task_ids = [t["id"] for t in page["tasks"]]

    @task(5)
    def dashboard(self):
        self.client.get(f"{self.base}/", name="/a/[id]/")

    @task(4)
    def project(self):
        self.client.get(
            f"{self.base}/projects/{random.choice(self.projects)}/", name="/a/[id]/projects/[p]/"
        )

    @task(3)
    def task_page(self):
        self.client.get(f"{self.base}/tasks/{random.choice(self.task_ids)}/", name="/a/[id]/tasks/[t]/")

    @task(1)
    def stats(self):
        self.client.get(
            f"{self.base}/stats/?project={random.choice(self.projects)}", name="/a/[id]/stats/"
        )

    @task(1)
    def new_task(self):
        r = self.client.post(
            f"{self.base}/projects/{random.choice(self.projects)}/tasks/",
            json={"title": "load", "tags": random.sample(["bug", "feature", "urgent"], 2)},
            name="/a/[id]/projects/[p]/tasks/ POST",
        )
        if r.status_code == 201:
            self.task_ids.append(r.json()["id"])

    @task(1)
    def status(self):
        self.client.post(
            f"{self.base}/tasks/{random.choice(self.task_ids)}/status/",
            json={"status": random.choice(["todo", "doing", "done"])},
            name="/a/[id]/tasks/[t]/status/ POST",
        )

    @task(1)
    def comment(self):
        self.client.post(
            f"{self.base}/tasks/{random.choice(self.task_ids)}/comments/",
            json={"author": random.choice(self.members), "body": "a comment under load"},
            name="/a/[id]/tasks/[t]/comments/ POST",
        )
