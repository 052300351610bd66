from django.urls import path

from . import views

urlpatterns = [
    path("plans/", views.plans),
    path("a/<int:account_id>/", views.dashboard),
    path("a/<int:account_id>/stats/", views.stats),
    path("a/<int:account_id>/projects/<int:project_id>/", views.project_detail),
    path("a/<int:account_id>/projects/<int:project_id>/tasks/", views.task_create),
    path("a/<int:account_id>/tasks/<int:task_id>/", views.task_detail),
    path("a/<int:account_id>/tasks/<int:task_id>/status/", views.task_status),
    path("a/<int:account_id>/tasks/<int:task_id>/comments/", views.comment_create),
]
