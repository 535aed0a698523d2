from django.urls import path

from . import artifacts, logs, views, webhooks

app_name = "dashboard"
urlpatterns = [
    path("", views.overview, name="overview"),
    path("board/", views.board, name="board"),
    path("pipelines/", views.pipeline_list, name="pipelines"),
    # Before <slug>/: "new" is a reserved slug (see forms.RESERVED_SLUGS).
    path("pipelines/new/", views.pipeline_new, name="pipeline_new"),
    path("pipelines/<slug:slug>/", views.pipeline_detail, name="pipeline"),
    path("pipelines/<slug:slug>/run/", views.pipeline_trigger, name="pipeline_trigger"),
    path("pipelines/<slug:slug>/edit/", views.pipeline_edit, name="pipeline_edit"),
    path("pipelines/<slug:slug>/versions/", views.pipeline_versions, name="pipeline_versions"),
    path("pipelines/<slug:slug>/diff/", views.pipeline_diff, name="pipeline_diff"),
    path("pipelines/<slug:slug>/webhook/", webhooks.pipeline_webhook, name="pipeline_webhook"),
    path("runs/<int:run_id>/", views.run_detail, name="run"),
    path("runs/<int:run_id>/gate-panel/", views.run_gate_panel, name="run_gate_panel"),
    path("runs/<int:run_id>/steps/<int:step_id>/log.txt", logs.step_log_raw, name="step_log_raw"),
    path(
        "runs/<int:run_id>/steps/<int:step_id>/log/", logs.step_log_window, name="step_log_window"
    ),
    path(
        "runs/<int:run_id>/artifacts/<int:artifact_id>/",
        artifacts.artifact_download,
        name="artifact_download",
    ),
    path("runs/<int:run_id>/cancel/", views.run_cancel, name="run_cancel"),
    path("runs/<int:run_id>/retry/", views.run_retry, name="run_retry"),
    path("runs/<int:run_id>/gates/<int:gate_id>/decide/", views.gate_decide, name="gate_decide"),
    path(
        "runs/<int:run_id>/gates/<int:gate_id>/override/",
        views.gate_override,
        name="gate_override",
    ),
    path("gates/<int:gate_id>/", views.gate_redirect, name="gate"),
    path("approvals/", views.approvals, name="approvals"),
    path("approvals/count/", views.approvals_count, name="approvals_count"),
    path("accounts/tokens/", views.tokens, name="tokens"),
]
